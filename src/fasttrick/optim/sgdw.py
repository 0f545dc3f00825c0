"""FusedSGDW: SGD with momentum and L2 or decoupled weight decay, one pass over memory per step."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..ops import momentum_dtype, resolve_backend, sgdw_reference_
from ..ops.library import members_are_blocks
from .checkpoint import MEMBER_TABLE, loaded_group, saved_group
from .members import (
    MEMBER_KEYS,
    _check_member_values,
    _check_members,
    _dtensor_class,
    _install_member_table,
    _member_columns,
    _number,
)
from .tensors import (
    _buffer_dtype,
    _check_hyperparameters,
    _check_lr_device,
    _forget_buffers,
    _has_buffers,
    _kernel_takes,
    _local_tensors,
    _lr_arguments,
)

# The kernels' buffer dtype per param dtype (ops.momentum_dtype), as a dict: looked up per tensor per step.
_BUFFER_DTYPE = {
    dtype: momentum_dtype(dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
}
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.complex128)


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
        differentiable: only ``False``; a step that autograd can differentiate is not supported.
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
        if differentiable:
            raise ValueError(
                "FusedSGDW does not support differentiable=True (its kernels update in place outside autograd); "
                "use torch.optim.SGD(..., differentiable=True) to differentiate through the step"
            )
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
        # (backend, device) -> update function, resolved outside any compiled region (resolving probes
        # imports and extensions, which torch.compile cannot trace); a plain attribute Dynamo reads.
        self._backend_fns: dict[tuple[str, torch.device], Callable[..., None]] = {}
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
            self._update_function(group["backend"], device)  # raises now if an explicit backend cannot run

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

    def _update_function(self, backend: str, device: torch.device) -> Callable[..., None]:
        update = self._backend_fns.get((backend, device))
        if update is None:  # params moved to a new device, or a group's backend changed, since __init__
            update = resolve_backend(backend, device)[1]
            self._backend_fns[(backend, device)] = update
        return update

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # An optimizer pickled by an earlier FusedSGDW may lack keys added since.
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("nesterov", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("backend", self.defaults.get("backend", "auto"))
            group.setdefault("members", 1)
        self._backend_fns = getattr(self, "_backend_fns", {})  # not pickled state: resolved again on use

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

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
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
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf)
        return loss

    def _creates_buffers(self) -> bool:
        return any(
            _has_buffers(group) and p.grad is not None and "momentum_buffer" not in self.state.get(p, {})
            for group in self.param_groups
            for p in group["params"]
        )

    def _launch_calls(self, group: dict[str, Any], launches: dict, hyper: Tensor | None) -> list[tuple]:
        """(update, params, grads, buffers, floats, first_step, lr_tensor, device) of each launch."""
        calls = []
        for (device, _, first_step, kernel), (ps, gs, bs) in launches.items():
            update = self._update_function(group["backend"], device) if kernel else sgdw_reference_
            if hyper is None:
                lr_float, lr_tensor = _lr_arguments(group["lr"], device)
                floats = (lr_float, group["momentum"], group["dampening"], group["weight_decay"])
            else:  # the kernels read every member's values from `hyper`, the floats unused
                lr_tensor, floats = None, (0.0, 0.0, 0.0, 0.0)
            calls.append((update, ps, gs, bs, floats, first_step, lr_tensor, device))
        return calls

    def _step_group(self, group: dict[str, Any], grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        has_momentum = _has_buffers(group)
        members = group["members"]
        # The members' [K, 4] values for the kernels, gathered on the device (no host sync).
        hyper = torch.stack(_member_columns(group), dim=1) if members > 1 else None
        # (device, dtype, first_step, kernel) -> (params, grads, buffers), all plain local tensors. A
        # tensor's first step does not read its buffer, so tensors starting now (step 1, or unfrozen
        # later) go in a launch of their own; `kernel` False is the per-tensor path for what the
        # kernels cannot walk (sparse grads, strided views, grads laid out unlike their param).
        launches: dict[tuple[torch.device, torch.dtype, bool, bool], tuple[list[Tensor], list[Tensor], list[Tensor]]]
        launches = defaultdict(lambda: ([], [], []))
        created: list[Tensor] = []
        dtensor = _dtensor_class()
        try:
            for p in group["params"]:
                if p.grad is None:
                    continue
                first_step = False
                buf = None
                if has_momentum:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        # A member with momentum 0 never writes its part: zeros, not whatever memory held.
                        new_buffer = torch.zeros_like if members > 1 else torch.empty_like
                        buf = new_buffer(p, dtype=_buffer_dtype(p), memory_format=torch.preserve_format)
                        state["momentum_buffer"] = buf
                        created.append(p)
                        first_step = True
                param, grad = p, p.grad
                if p.is_complex() or isinstance(p, dtensor) or isinstance(grad, dtensor) or isinstance(buf, dtensor):
                    param, grad, buf = _local_tensors(param, grad, buf, dtensor)
                kernel = _kernel_takes(param, grad, buf) and members_are_blocks(param, members)
                lists = launches[(param.device, param.dtype, first_step, kernel)]
                lists[0].append(param)
                lists[1].append(grad)
                if buf is not None:
                    lists[2].append(buf)
            calls = self._launch_calls(group, launches, hyper)
        except Exception:
            _forget_buffers(self.state, created)  # refused before any launch: no unwritten buffer stays
            raise

        for update, ps, gs, bs, floats, first_step, lr_tensor, device in calls:  # launched after every check
            update(
                ps,
                gs,
                bs,
                *floats,
                group["nesterov"],
                group["maximize"],
                group["decoupled_weight_decay"],
                first_step,
                lr_tensor=lr_tensor,
                hyper=hyper,
                grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
                found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True),
            )
