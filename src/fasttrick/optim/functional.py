"""`fasttrick.sgdw`: the functional form of FusedSGDW's update, as torch.optim's functional `sgd`.

``sgdw(params, grads, momentum_buffers, *, lr, momentum, ...)`` updates `params` (and the buffers) in
place. `momentum_buffers` holds one entry per param: a buffer, or None for a tensor whose momentum starts
now (its buffer is created, and written into the list once every launch has run; a call that raises
leaves the list as it was). FusedSGDW.step is `_init_group` followed by this function.

Tensors are grouped into launches by (device, dtype, first step, whether the kernels can walk them);
what the kernels cannot walk takes the per-tensor path, with a `PerTensorPathWarning` once per cause.
With ``differentiable=True`` every launch runs the reference update (ops/reference.py), plain torch ops
that autograd records, as torch.optim.SGD(differentiable=True) does.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import torch
from torch import Tensor

from ..ops import resolve_backend, sgdw_reference_
from ..ops.dispatch import SgdwBackend
from ..ops.library import members_are_blocks
from .members import _dtensor_class
from .tensors import _buffer_dtype, _kernel_takes, _local_tensors, _lr_arguments, _slow_path_cause

Launches = dict[tuple[torch.device, torch.dtype, bool, bool], tuple[list[Tensor], list[Tensor], list[Tensor]]]


class PerTensorPathWarning(UserWarning):
    """Some tensors take FusedSGDW's slow per-tensor path (one update per tensor, not one fused launch);
    the message names the cause and what to change. Warned once per cause per process."""


_WARNED: set[str] = set()


def sgdw(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float | Tensor,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    backend: str = "auto",
    differentiable: bool = False,
    hyper: Tensor | None = None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One FusedSGDW step of `params` with `grads`; see the module doc and docs/fused_sgdw.md.

    `momentum_buffers` is empty for momentum 0 (as torch's functional `sgd` takes it: one entry per param
    otherwise). `hyper` is a float64 [K, 4] member table (rows lr, momentum, dampening, weight_decay; the
    four floats then unused); `grad_scale` / `found_inf` are GradScaler's."""
    members = 1 if hyper is None else hyper.shape[0]
    has_momentum = members > 1 or momentum != 0
    if has_momentum and len(momentum_buffers) != len(params):
        raise ValueError(
            f"fasttrick.sgdw: {len(params)} params and {len(momentum_buffers)} momentum buffers; give one per "
            "param (None where momentum starts now)"
        )
    buffers: list[Tensor | None] = list(momentum_buffers) if has_momentum else [None] * len(params)
    created: dict[int, Tensor] = {}
    launches = _launches(params, grads, buffers, created, members, has_momentum, backend, differentiable)
    for (device, _, first_step, kernel), (ps, gs, bs) in launches.items():
        update = _update_function(backend, device, kernel, differentiable)
        if hyper is None:
            lr_float, lr_tensor = _lr_arguments(lr, device, differentiable)
            floats = dict(lr=lr_float, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        else:  # the kernels read every member's values from `hyper`, the floats unused
            lr_tensor, floats = None, dict(lr=0.0, momentum=0.0, dampening=0.0, weight_decay=0.0)
        update(
            ps, gs, bs, **floats, nesterov=nesterov, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
            first_step=first_step, lr_tensor=lr_tensor, hyper=hyper,
            grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
            found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True),
        )  # fmt: skip
    for index, buf in created.items():  # every launch ran: the new buffers are the caller's
        momentum_buffers[index] = buf


def _launches(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor | None],
    created: dict[int, Tensor],
    members: int,
    has_momentum: bool,
    backend: str,
    differentiable: bool,
) -> Launches:
    """(device, dtype, first_step, kernel) -> (params, grads, buffers), all plain local tensors. A tensor's
    first step does not read its buffer, so tensors starting now go in a launch of their own; `kernel`
    False is the per-tensor path for what the kernels cannot walk (sparse grads, strided views, grads laid
    out unlike their param). New buffers go into `created` (by index), not into `buffers`."""
    launches: Launches = defaultdict(lambda: ([], [], []))
    dtensor = _dtensor_class()
    for index, (p, grad) in enumerate(zip(params, grads, strict=True)):
        first_step = False
        buf = buffers[index]
        if has_momentum and buf is None:
            # A member with momentum 0 never writes its part: zeros, not whatever memory held.
            new_buffer = torch.zeros_like if members > 1 else torch.empty_like
            buf = created[index] = new_buffer(p, dtype=_buffer_dtype(p), memory_format=torch.preserve_format)
            first_step = True
        param = p
        if p.is_complex() or isinstance(p, dtensor) or isinstance(grad, dtensor) or isinstance(buf, dtensor):
            param, grad, buf = _local_tensors(param, grad, buf, dtensor)
        kernel = not differentiable and _kernel_takes(param, grad, buf) and members_are_blocks(param, members)
        if not kernel and not differentiable and backend != "reference":
            _warn_per_tensor(_slow_path_cause(param, grad, buf, members))
        lists = launches[(param.device, param.dtype, first_step, kernel)]
        lists[0].append(param)
        lists[1].append(grad)
        if buf is not None:
            lists[2].append(buf)
    return launches


# (backend, device) -> (concrete name, update function). Resolving probes imports and extensions, which
# torch.compile cannot trace: FusedSGDW resolves each group's backend when the group is added, and a
# compiled step only reads this dict.
_RESOLVED: dict[tuple[str, torch.device], tuple[str, SgdwBackend]] = {}


def resolved_backend(backend: str, device: torch.device) -> tuple[str, SgdwBackend]:
    """(concrete name, update function) of `backend` on `device`, resolved once per process."""
    found = _RESOLVED.get((backend, device))
    if found is None:
        found = _RESOLVED[(backend, device)] = resolve_backend(backend, device)
    return found


def _update_function(backend: str, device: torch.device, kernel: bool, differentiable: bool) -> SgdwBackend:
    if differentiable or not kernel:
        return sgdw_reference_
    return resolved_backend(backend, device)[1]


def _warn_per_tensor(cause: str) -> None:
    # Not while torch.compile traces: torch 2.11's Dynamo cannot trace warnings.warn (2.14's can), and that
    # graph break fails a fullgraph compile. An eager step of the same tensors warns.
    if cause in _WARNED or torch.compiler.is_compiling():
        return
    _WARNED.add(cause)
    warnings.warn(
        f"FusedSGDW: some tensors take the slow per-tensor path ({cause}): each is updated on its own, not in "
        "one fused launch. Params that own their memory, with dense grads of their dtype laid out like them "
        "(p.grad = p.grad.contiguous(memory_format=...) as the param), stay in the kernel.",
        PerTensorPathWarning,
        stacklevel=4,
    )


def concrete_backend(backend: str, device: torch.device, differentiable: bool) -> str:
    """The backend `backend` runs on `device` ("reference" for a differentiable step)."""
    return "reference" if differentiable else resolved_backend(backend, device)[0]
