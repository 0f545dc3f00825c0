"""FusedSGDW: SGD with momentum and L2 or decoupled weight decay, one pass over memory per step."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

from .checkpoint import MEMBER_TABLE, loaded_group, saved_group
from .functional import concrete_backend, resolved_backend, sgdw
from .members import (
    MEMBER_KEYS,
    _check_member_values,
    _check_members,
    _install_member_table,
    _member_columns,
    _number,
)
from .tensors import _SUPPORTED_DTYPES, _buffer_dtype, _check_hyperparameters, _check_lr_device, _has_buffers


class FusedSGDW(Optimizer):
    r"""SGD with momentum plus coupled L2 or decoupled weight decay, fused into one kernel per step.

    A drop-in for :class:`torch.optim.SGD`: with ``decoupled_weight_decay=False`` (the default) the
    update is exactly torch's. Per element, in this order (g = grad, b = momentum buffer)::

        g = g / grad_scale                      # when driven by torch.amp.GradScaler
        g = -g                                  # maximize
        g = g + weight_decay * p                # coupled L2 (default), or with decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)         #   decay applied to the weights, outside the buffer
        b = g  (tensor's first step)  else  b = momentum * b + (1 - dampening) * g
        u = g + momentum * b  if nesterov  else  b
        p = p - lr * u

    Arithmetic is fp32 (fp64 for fp64 params); fp16/bf16 params keep an fp32 momentum buffer.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer. Any strided layout,
            sparse gradients and complex parameters (updated as real views, as torch does) are taken;
            DTensor parameters (FSDP2, tensor parallel) are updated through their local shards.
        lr: learning rate, a float or a one-element tensor, kept as given in ``param_groups``, as in
            torch: a float stays a float (loggers, ``get_last_lr()`` and checkpoints see floats) and
            reaches the kernels as a launch argument; a tensor stays the caller's own object, read by
            the kernels on the device (no host sync, and a compiled step does not recompile when a
            scheduler ``fill_``s it). A tensor lr lives on the parameters' device, or on the CPU
            (read on the host each step, which a CUDA graph cannot capture).
        momentum, dampening, weight_decay, nesterov, maximize: as in :class:`torch.optim.SGD`.
        foreach, fused: accepted for torch.optim.SGD compatibility and select nothing: ``backend``
            chooses the implementation.
        differentiable: as in :class:`torch.optim.SGD`: the step runs under autograd, through the
            reference update (plain torch ops, no kernel), so a loss after the step can be
            differentiated with respect to the params before it and to a tensor ``lr``.
        decoupled_weight_decay: decay the weights by ``lr * weight_decay`` directly (SGDW) instead
            of adding ``weight_decay * p`` to the gradient.
        backend: ``"auto"`` (fastest available for the device; never fails), or one of
            ``"triton"``, ``"cuda"``, ``"cpu"``, ``"foreach"``, ``"reference"`` (raises
            :class:`fasttrick.BackendUnavailableError` with the cause if it cannot run).
        members: ``K`` models held as one stacked tensor per parameter (an ensemble, a sweep): dim 0
            of every parameter of the group is ``K`` equal blocks, member ``k``'s being
            ``p.unflatten(0, (K, -1))[k]``, and each member has its own ``lr``, ``momentum``,
            ``dampening`` and ``weight_decay`` (each a float for all, or ``K`` values). The result is
            exactly ``K`` separate steps, one per member, in one launch per (device, dtype). See
            :meth:`set_member` and docs/fused_sgdw.md, "Members".

    Members: the group's four per-member values live in ``group["member_table"]``, a float64
    ``[4, K]`` tensor on the parameters' device (rows lr, momentum, dampening, weight_decay), and
    ``group["lr"]`` etc. are ``[K]`` views of its rows. Write them in place
    (``opt.set_member(0, k, lr=0.01)``, ``group["lr"][k] = 0.01``, ``group["lr"].copy_(values)``): the
    kernels read them on the device, so a compiled step does not recompile and a CUDA graph replays
    the new values. Numbers assigned to a key (``group["lr"] = 0.01`` or ``K`` values) are written
    into the table at the next step (a compiled step recompiles once for it); a ``[K]`` tensor
    assigned to a key is read as it is, like a tensor ``lr``. Numbers are checked as torch checks
    them; tensors are not (that would read them back from the device). Such a group always keeps
    momentum buffers (of the parameters' shape); a member whose momentum is 0 takes torch's
    momentum-free update and neither reads nor writes its part of the buffer. ``nesterov``,
    ``maximize`` and ``decoupled_weight_decay`` stay one per group. torch's LR schedulers set one
    value per group and cannot drive the members: set each member's values from your own schedule.

    AMP: ``GradScaler.step`` hands the scale and the inf flag to the kernel
    (``_step_supports_amp_scaling``); a step with an inf/NaN gradient changes nothing. On a step
    that creates momentum buffers under a GradScaler, the optimizer reads ``found_inf`` once on the
    host so that a skipped first step leaves no buffer behind, as ``torch.optim.SGD`` does.
    """

    _step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf instead of syncing

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
        members: int = 1,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
            backend=backend,
            members=members,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.dtype not in _SUPPORTED_DTYPES:
                raise TypeError(
                    "FusedSGDW supports float32, float16, bfloat16, float64, complex64 and complex128 parameters, "
                    f"got {p.dtype}"
                )
        members = _check_members(group)
        _check_hyperparameters(group)
        if members > 1:
            _install_member_table(group, members)
        for device in {p.device for p in group["params"]}:
            if members == 1:
                _check_lr_device(group["lr"], device)
            resolved_backend(group["backend"], device)  # raises now if an explicit backend cannot run

    def set_member(
        self,
        group_index: int,
        member: int,
        *,
        lr: float | None = None,
        momentum: float | None = None,
        dampening: float | None = None,
        weight_decay: float | None = None,
    ) -> None:
        """Sets member ``member``'s hyper-parameters in group ``group_index`` (those given), in place in
        the group's ``[K]`` tensors: no host sync, nothing to recompile. Checked as torch checks them."""
        if not 0 <= group_index < len(self.param_groups):
            raise IndexError(f"FusedSGDW.set_member: group {group_index} of {len(self.param_groups)}")
        group = self.param_groups[group_index]
        members = group["members"]
        if members == 1:
            raise ValueError(
                f"FusedSGDW.set_member: group {group_index} has one member (members=1); set its group['lr'] etc. "
                "directly, or build the group with members=K"
            )
        if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < members:
            raise IndexError(f"FusedSGDW.set_member: member {member!r} of a group of {members} members")
        values = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        given = {key: _number(key, value) for key, value in values.items() if value is not None}
        for key, value in given.items():
            _check_member_values(key, [value], group["nesterov"], first_member=member)
        columns = dict(zip(MEMBER_KEYS, _member_columns(group), strict=True))
        for key, value in given.items():
            columns[key][member].fill_(value)  # a fill kernel on the device: no host sync

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # An optimizer pickled by an earlier FusedSGDW may lack keys added since.
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("nesterov", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("backend", self.defaults.get("backend", "auto"))
            group.setdefault("members", 1)
            group.setdefault("differentiable", False)

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, its param groups in torch.optim.SGD's format (see optim/checkpoint.py):
        no ``backend``; decoupled decay under ``decoupled_weight_decay`` instead of ``weight_decay``; a
        group with members saves its values as lists (read from the device)."""
        for group in self.param_groups:
            if group["members"] > 1:
                _member_columns(group)  # numbers assigned since the last step go into the table first
        state = super().state_dict()
        state["param_groups"] = [saved_group(group) for group in state["param_groups"]]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a FusedSGDW or torch.optim.SGD state_dict; each group keeps this optimizer's backend.

        torch's loader casts every floating state tensor to its parameter's dtype, which would round
        an fp16/bf16 parameter's fp32 momentum buffer; the buffers are restored from the incoming
        state_dict at full precision afterwards.
        """
        saved_groups = state_dict["param_groups"]
        for index, saved in enumerate(saved_groups):
            if "momentum" not in saved:
                kind = " (it has 'betas': an Adam-family optimizer's)" if "betas" in saved else ""
                raise ValueError(
                    f"FusedSGDW.load_state_dict: param group {index} of the state_dict has no 'momentum' (its keys: "
                    f"{', '.join(sorted(saved))}){kind}; it is not a FusedSGDW or torch.optim.SGD state_dict. Load "
                    "one saved by FusedSGDW or torch.optim.SGD, or start this optimizer afresh"
                )
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"FusedSGDW: the state_dict has {len(saved_groups)} param groups, this optimizer "
                f"{len(self.param_groups)}; build the optimizer with the groups it was saved from"
            )
        groups = [loaded_group(s, g["backend"]) for s, g in zip(saved_groups, self.param_groups, strict=True)]
        for index, (group, own) in enumerate(zip(groups, self.param_groups, strict=True)):
            if group["members"] != own["members"]:
                raise ValueError(
                    f"FusedSGDW: param group {index} of the state_dict has {group['members']} members, this "
                    f"optimizer's {own['members']}; build the optimizer with the members it was saved with"
                )
            _check_hyperparameters(group)
        tables = [group.get(MEMBER_TABLE) for group in self.param_groups]
        saved_ids = itertools.chain.from_iterable(g["params"] for g in saved_groups)
        current = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        param_of = dict(zip(saved_ids, current, strict=False))  # sizes: checked by torch's loader
        buffers = {
            param_of[pid]: s["momentum_buffer"]
            for pid, s in state_dict["state"].items()
            if pid in param_of and isinstance(s.get("momentum_buffer"), Tensor)
        }
        super().load_state_dict({**state_dict, "param_groups": groups})
        # torch's loader puts the saved groups (member values as lists) in place of the current ones: the values
        # go into the current tables, so the views and any reference to a table stay what the kernels read.
        for index, table in enumerate(tables):
            if table is not None:
                _install_member_table(self.param_groups[index], table.shape[1], table)
        for p, buf in buffers.items():
            self.state[p]["momentum_buffer"] = buf.to(device=p.device, dtype=_buffer_dtype(p), copy=True)

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step: per group, `_init_group` then `fasttrick.sgdw` (as torch/optim/sgd.py). A step that
        raises keeps no momentum buffer it created (see docs/fused_sgdw.md, "A step that raises")."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        if found_inf is not None and self._creates_buffers() and found_inf.item() != 0:
            # The one host read, on a step that would create momentum buffers: a skipped step changes
            # nothing, and must not leave new (unwritten) buffers behind. Other steps skip on the device.
            return loss
        # As torch's _use_grad_for_differentiable: autograd records the step only when differentiable.
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            self._step(grad_scale, found_inf)
        return loss

    def _step(self, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        steps = []  # per group: (group, [(params, grads, momentum_buffers) of each sgdw call], has_momentum)
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[Tensor | None] = []
            rounds = self._init_group(group, params, grads, buffers)
            steps.append((group, _split_rounds(params, grads, buffers, rounds), _has_buffers(group)))
        for group, calls, _ in steps:
            hyper = torch.stack(_member_columns(group), dim=1) if group["members"] > 1 else None
            for params, grads, buffers in calls:
                sgdw(
                    params, grads, buffers, lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                    weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
                    decoupled_weight_decay=group["decoupled_weight_decay"], backend=group["backend"],
                    differentiable=group["differentiable"], hyper=hyper, grad_scale=grad_scale, found_inf=found_inf,
                )  # fmt: skip
        # Only now, every launch of every group having run: a step that raised kept no new buffer.
        for _, calls, has_momentum in steps:
            if has_momentum:
                for params, _, buffers in calls:
                    for p, buf in zip(params, buffers, strict=True):
                        self.state[p]["momentum_buffer"] = buf

    def _creates_buffers(self) -> bool:
        return any(
            _has_buffers(group) and p.grad is not None and "momentum_buffer" not in self.state.get(p, {})
            for group in self.param_groups
            for p in group["params"]
        )

    def _init_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None]
    ) -> tuple[int, ...] | None:
        """Fills the lists with the group's params that have grads, their grads and their momentum buffers
        (None where momentum starts now; none without momentum), as torch.optim.SGD's `_init_group` (which
        torch.compile runs in Python, not traced). Returns None or, when a param is listed twice, each
        entry's occurrence number (see `_split_rounds`)."""
        has_momentum = _has_buffers(group)
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            if has_momentum:
                momentum_buffers.append(self.state[p].get("momentum_buffer") if p in self.state else None)
        ids = [id(p) for p in params]
        if len(set(ids)) == len(ids):
            return None
        seen: dict[int, int] = {}
        rounds = []
        for key in ids:
            seen[key] = seen.get(key, -1) + 1
            rounds.append(seen[key])
        return tuple(rounds)

    def backends(self) -> list[dict[tuple[torch.device, torch.dtype], str]]:
        """Per param group, the backend that runs each (device, dtype) of its params, e.g.
        ``[{(device("cpu"), torch.float32): "cpu"}]`` ("reference" where ``differentiable=True``). Tensors
        the kernels cannot walk take the per-tensor path whatever this says (a PerTensorPathWarning tells)."""
        return [
            {
                (p.device, p.dtype): concrete_backend(group["backend"], p.device, group["differentiable"])
                for p in group["params"]
            }
            for group in self.param_groups
        ]


def _split_rounds(
    params: list[Tensor], grads: list[Tensor], buffers: list[Tensor | None], rounds: tuple[int, ...] | None
) -> list[tuple[list[Tensor], list[Tensor], list[Tensor | None]]]:
    """The `sgdw` calls of a group: one, or where a param is listed twice, one per occurrence (its k-th
    occurrences in the k-th call, each with the buffer the step started with), so that it is updated twice
    as torch.optim.SGD updates it, and no launch holds a tensor twice."""
    if rounds is None:
        return [(params, grads, buffers)]
    calls: list[tuple[list[Tensor], list[Tensor], list[Tensor | None]]] = [([], [], []) for _ in range(max(rounds) + 1)]
    for index, round_ in enumerate(rounds):
        calls[round_][0].append(params[index])
        calls[round_][1].append(grads[index])
        if buffers:
            calls[round_][2].append(buffers[index])
    return calls
