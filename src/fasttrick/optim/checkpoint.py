"""FusedSGDW's saved param groups in torch.optim.SGD's format, so checkpoints interchange both ways.

A saved group holds exactly torch.optim.SGD's keys (lr, momentum, dampening, weight_decay, nesterov,
maximize, foreach, fused, differentiable) when the math is torch's. That matters beyond
``load_state_dict``: torch.distributed.checkpoint loads the keys of the *receiving* optimizer's
state_dict and fails on any it cannot find in the checkpoint, so one extra key on either side
breaks a DCP load between FusedSGDW and torch.optim.SGD.

- ``backend`` is never saved: it is how this process runs the update, not training state. A
  loading optimizer keeps the backend it was built with (a checkpoint written where Triton ran
  also loads where only the C++ kernel does).
- A group with members (``members`` K > 1: K models stacked along dim 0) saves ``members`` and each of
  lr, momentum, dampening and weight_decay as a list of K floats (read from the device); its table
  itself is not saved. torch.optim.SGD cannot load such a group: it is one run per member.
- Decoupled weight decay (SGDW) is math torch.optim.SGD cannot run. Its rate is saved under
  ``decoupled_weight_decay`` *instead of* ``weight_decay``, so a torch.optim.SGD can never read it
  as L2: a DCP load into torch.optim.SGD fails with "Missing key ... weight_decay", and a
  ``load_state_dict`` into torch.optim.SGD fails at its first ``step()`` with ``KeyError:
  'weight_decay'``. Training on with coupled L2 (what torch would do with the value) or with no
  decay (what dropping it would do) would both change the run without a word.
"""

from __future__ import annotations

from typing import Any

# The keys torch.optim.SGD saves that FusedSGDW's groups may not hold, with the values
# torch.optim.SGD(params) stores: a DCP load into a torch.optim.SGD asks for each of them.
_TORCH_SGD_ONLY_KEYS = {"foreach": None, "fused": None, "differentiable": False}

# FusedSGDW group keys that torch.optim.SGD does not have.
_BACKEND = "backend"
_DECOUPLED = "decoupled_weight_decay"
_MEMBERS = "members"
MEMBER_TABLE = "member_table"  # a group with members: float64 [4, K], rows lr, momentum, dampening, weight_decay
_MEMBER_KEYS = ("lr", "momentum", "dampening", "weight_decay")  # each a [K] tensor in a group with members


def saved_group(group: dict[str, Any]) -> dict[str, Any]:
    """The torch.optim.SGD-format form of one packed FusedSGDW param group (see the module doc)."""
    saved = {key: value for key, value in group.items() if key not in (_BACKEND, _DECOUPLED, _MEMBERS, MEMBER_TABLE)}
    for key, value in _TORCH_SGD_ONLY_KEYS.items():
        saved.setdefault(key, value)
    members = group.get(_MEMBERS, 1)
    if members > 1:
        saved.update({key: group[key].tolist() for key in _MEMBER_KEYS}, members=members)
    # Decoupled decay at rate 0 is no decay: the same math as torch's, so saved as torch's.
    if group.get(_DECOUPLED, False) and _any_nonzero(saved["weight_decay"]):
        saved[_DECOUPLED] = saved.pop("weight_decay")
    return saved


def _any_nonzero(weight_decay: float | list[float]) -> bool:
    return any(v != 0 for v in weight_decay) if isinstance(weight_decay, list) else weight_decay != 0


def loaded_group(saved: dict[str, Any], backend: str) -> dict[str, Any]:
    """The FusedSGDW param group for a group saved by FusedSGDW or torch.optim.SGD, run by `backend`.

    Also reads FusedSGDW's earlier format (``decoupled_weight_decay`` a bool next to
    ``weight_decay``, ``backend`` saved), so run checkpoints written before keep loading.
    """
    group = dict(saved)
    decoupled = group.pop(_DECOUPLED, False)
    if isinstance(decoupled, bool):  # torch.optim.SGD's state (no key) or the earlier format
        group[_DECOUPLED] = decoupled
    else:
        if "weight_decay" in group:
            raise ValueError(
                "FusedSGDW: a saved param group has both weight_decay and a decoupled_weight_decay rate "
                f"({group['weight_decay']} and {decoupled}); a state_dict from FusedSGDW has one of them"
            )
        group["weight_decay"] = decoupled
        group[_DECOUPLED] = True
    group[_BACKEND] = backend
    group.setdefault(_MEMBERS, 1)
    return group
