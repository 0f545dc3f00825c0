"""How the members of a fused array step (:class:`MemberSteps`), and a member's part of a fused tensor."""

from __future__ import annotations

from typing import Any

import torch

from ..config import FusedSGDWConfig
from ..optim import FusedSGDW

# A FusedSGDW member's own values, each a column of the array's table (FusedSGDW.set_member).
_MEMBER_VALUES = ("lr", "momentum", "dampening", "weight_decay")


def member_part(tensor: torch.Tensor, k: int, members: int, shape: torch.Size) -> torch.Tensor:
    """Member ``k``'s part of a fused tensor (a param, its grad or its momentum buffer), as a view
    shaped like the plain model's tensor: dim 0 splits into ``members`` equal slices."""
    return tensor.unflatten(0, (members, -1))[k].view(shape)


class MemberSteps:
    """One optimizer step for every live member of an array.

    FusedSGDW members (not under fp16) take ONE launch over the array's params with a per-member
    table of hyper-parameters; :meth:`sync` copies each member's own param group (which its schedule
    drives) into the table once per epoch, and writes a frozen member's lr as 0 (its weights no longer
    change). Every other member steps its own optimizer over views of its slices.
    """

    def __init__(self, params: list[torch.Tensor], members: list[Any], fp16: bool):  # engine.array's _Member
        self.params = params
        self.members = members
        self.count = len(members)
        first = members[0].run.optimizer
        self.fused: FusedSGDW | None = None
        if isinstance(first, FusedSGDWConfig) and not fp16:
            groups = [member.optimizer.param_groups[0] for member in members]
            values = {key: [float(g[key]) for g in groups] for key in _MEMBER_VALUES}  # a value per member
            self.fused = FusedSGDW(
                [{"params": params, **values}],
                members=self.count,
                nesterov=first.nesterov,
                decoupled_weight_decay=first.decoupled_weight_decay,
                backend=first.backend,
            )

    def sync(self) -> None:
        """The members' current hyper-parameters into the fused launch's table (no-op without one)."""
        if self.fused is None:
            return
        for k, member in enumerate(self.members):
            values = {key: float(member.optimizer.param_groups[0][key]) for key in _MEMBER_VALUES}
            if member.outcome is not None:
                values["lr"] = 0.0
            self.fused.set_member(0, k, **values)

    def step(self) -> None:
        if self.fused is not None:
            self.fused.step()
            return
        for k, member in enumerate(self.members):
            if member.outcome is not None:
                continue
            for view, param in zip(member.params, self.params, strict=True):
                view.grad = None if param.grad is None else member_part(param.grad, k, self.count, view.shape)
            if member.scaler.is_enabled():
                member.scaler.step(member.optimizer)
                member.scaler.update()
            else:
                member.optimizer.step()
            for view in member.params:
                view.grad = None

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """Member ``k``'s optimizer state in its own optimizer's standard format (for a FusedSGDW
        member, torch.optim.SGD's: its momentum buffers are its slices of the array's buffers)."""
        member = self.members[k]
        if self.fused is not None and member.optimizer.param_groups[0]["momentum"] != 0:
            # a momentum-0 member keeps no buffer, as torch.optim.SGD keeps none (the array's slice is unused)
            for view, param in zip(member.params, self.params, strict=True):
                buffer = self.fused.state.get(param, {}).get("momentum_buffer")
                if buffer is not None:
                    member.optimizer.state[view]["momentum_buffer"] = member_part(buffer, k, self.count, view.shape)
        return member.optimizer.state_dict()

    def load_member_state_dict(self, k: int, state: dict[str, Any]) -> None:
        member = self.members[k]
        member.optimizer.load_state_dict(state)
        if self.fused is None:
            return
        for view, param in zip(member.params, self.params, strict=True):
            buffer = member.optimizer.state.get(view, {}).get("momentum_buffer")
            if buffer is None:
                continue
            fused_state = self.fused.state[param]
            if "momentum_buffer" not in fused_state:
                fused_state["momentum_buffer"] = torch.zeros_like(
                    param, dtype=buffer.dtype, memory_format=torch.preserve_format
                )
            member_part(fused_state["momentum_buffer"], k, self.count, view.shape).copy_(buffer)
            member.optimizer.state[view]["momentum_buffer"] = member_part(
                fused_state["momentum_buffer"], k, self.count, view.shape
            )
