"""FusedSGDW update with torch's multi-tensor `_foreach_*` ops: few launches, no custom kernel.

The fallback for devices without the C++/CUDA extension or Triton. Same math and order as
ops/reference.py, written like torch.optim.SGD's foreach path (`_multi_tensor_sgd`) and updating the
parameters and buffers in place, so it makes no more passes over memory than torch does: for fp32 with
momentum and L2, d = g + wd*p (3 tensor passes), b *= m (2), b += d (3), p -= lr*b (3): 11, as torch.

Scalars that live on the host: an lr or found_inf in a CPU tensor is read with `.item()` (the CPU *is*
the host: no device sync), except under torch.compile, where that would break the graph. Scalars on an
accelerator are never read on the host:
- a device lr multiplies the update first (`lr * u`, then `p -= that`: 2 passes more);
- a device found_inf makes the step "masked": every in-place write is either exact for a skipped step
  (grads divided by 1, params decayed by 1) or computed into a temporary and committed with
  `torch.where(skip, old, new, out=old)`, so a skipped step changes nothing, bit for bit.
fp16/bf16 params are updated in an fp32 copy (their buffers are fp32) and rounded back once.

Members (`hyper` a [K, 4] table, ops/library.py) take the reference's member update (ops/reference.py):
a member's scalars are a [K, 1, ...] column broadcast over its block, and every `_foreach_*` op given
broadcast operands runs tensor by tensor anyway. It is a step of its own per member, bit for bit, of the
reference's; this backend's own float path differs from it by rounding (fused multiply-adds).

Tensor passes for fp32 with momentum and L2 (tests/test_foreach.py counts the bytes): 11 (torch's foreach
step: 11); with a device lr 13; AMP with host scalars 13 (torch: GradScaler.unscale_'s 2 + 11, and a
sync); AMP masked on a device 21, the price of no host sync and a bit-exact skipped step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import momentum_dtype, sgdw_reference_


def sgdw_foreach_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    first_step: bool,
    lr_tensor: Tensor | None = None,
    hyper: Tensor | None = None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """The op schema's signature (ops/library.py); momentum is on when `momentum_buffers` is not empty."""
    if not params:
        return
    if hyper is not None and hyper.dim() == 2:  # a member table
        sgdw_reference_(
            params, grads, momentum_buffers, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, first_step=first_step,
            lr_tensor=lr_tensor, hyper=hyper, grad_scale=grad_scale, found_inf=found_inf,
        )  # fmt: skip
        return
    if hyper is not None:  # the schema's compiled form; the optimizer calls this backend with plain floats
        lr, momentum, dampening, weight_decay = hyper.tolist()
    device = params[0].device
    opmath = momentum_dtype(params[0].dtype)
    scalars = _step_scalars(lr_tensor if lr_tensor is not None else lr, found_inf, device, opmath)
    if scalars is None:
        return  # a skipped step changes nothing
    step_lr, skip = scalars  # a float, or a tensor when reading it would sync a device

    # fp16/bf16 params and grads are worked on in fp32 copies; fp32/fp64 ones in place.
    low_precision = params[0].dtype != opmath
    p = [t.to(opmath) for t in params] if low_precision else params
    g = [t.to(opmath) for t in grads] if low_precision else grads

    if grad_scale is not None:
        scale = grad_scale.to(device=device, dtype=opmath)
        if skip is not None:
            scale = torch.where(skip, 1.0, scale)  # g / 1 == g: a skipped step leaves the grads as they were
        torch._foreach_div_(g, scale)  # AMP: the unscaled grads are written back, as GradScaler.unscale_ does
        if low_precision:
            _commit(grads, g, skip)

    d = _gradient_term(p, g, grads, step_lr, skip, weight_decay, maximize, decoupled_weight_decay)

    u = d  # the update direction
    if momentum_buffers:
        u = _momentum_direction(d, grads, momentum_buffers, skip, momentum, dampening, nesterov, first_step)

    _apply_update(params, p, u, grads, momentum_buffers, step_lr, skip, low_precision)


def _apply_update(params, p, u, grads, momentum_buffers, step_lr, skip, low_precision) -> None:
    """p -= lr * u, in place unless the step may be skipped (then p is a temporary committed here)."""
    in_place = skip is None or low_precision
    if isinstance(step_lr, Tensor):
        u = _foreach("mul", u, u is not grads and u is not momentum_buffers, step_lr)
        new_p = _foreach("sub", p, in_place, u)
    else:
        new_p = _foreach("add", p, in_place, u, alpha=-step_lr)
    if new_p is not p:
        _commit(p, new_p, skip)
    if low_precision:
        _commit(params, p, skip)  # rounds to the params' dtype


def _step_scalars(
    lr: float | Tensor, found_inf: Tensor | None, device: torch.device, opmath: torch.dtype
) -> tuple[float | Tensor, Tensor | None] | None:
    """(lr, skip) for this step, or None when found_inf says on the host that the step is skipped.

    lr: a float, or a 0-d opmath tensor on `device` when reading it would sync a device; skip: None, or a
    0-d bool on `device` (the AMP step may be skipped; every write is then masked).
    """
    skip = None
    if found_inf is not None:
        found = _host_value(found_inf)
        if found is None:
            skip = found_inf.to(device) != 0
        elif found != 0:
            return None
    if isinstance(lr, Tensor):
        host_lr = _host_value(lr)
        lr = lr.to(device=device, dtype=opmath) if host_lr is None else host_lr
    return lr, skip


def _gradient_term(
    p: list[Tensor],
    g: list[Tensor],
    grads: list[Tensor],
    lr: float | Tensor,
    skip: Tensor | None,
    weight_decay: float,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> list[Tensor]:
    """d = -g if maximize, + weight_decay * p (coupled L2); decoupled decay scales p in place instead.
    d is g itself, or a new list (ours to overwrite) once it differs from the grads."""
    d = g
    if maximize:
        d = _foreach("neg", d, d is not grads)
    if weight_decay != 0:
        if decoupled_weight_decay:
            decay = 1 - lr * weight_decay
            if skip is not None:
                decay = torch.where(skip, 1.0, torch.as_tensor(decay, dtype=p[0].dtype, device=p[0].device))
            torch._foreach_mul_(p, decay)
        else:
            d = _foreach("add", d, d is not grads, p, alpha=weight_decay)
    return d


def _momentum_direction(
    d: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    skip: Tensor | None,
    momentum: float,
    dampening: float,
    nesterov: bool,
    first_step: bool,
) -> list[Tensor]:
    """Updates the buffers (b = d on a first step, else b = momentum * b + (1 - dampening) * d) and returns
    the update direction: d + momentum * b with nesterov, else b."""
    if first_step:
        b = d
    else:
        b = _foreach("mul", bufs, skip is None, momentum)  # into a temporary when the step may be skipped
        torch._foreach_add_(b, d, alpha=1 - dampening)
    if b is not bufs:
        _commit(bufs, b, skip)
    return _foreach("add", d, d is not grads, b, alpha=momentum) if nesterov else b


def _host_value(t: Tensor) -> float | None:
    """A scalar tensor's value when reading it costs no device sync (a CPU tensor, outside torch.compile)."""
    if t.device.type == "cpu" and not torch.compiler.is_compiling():
        return t.item()
    return None


def _foreach(op: str, xs: list[Tensor], in_place: bool, *args, **kwargs) -> list[Tensor]:
    """torch._foreach_<op>(xs, ...): in place when `xs` is ours to overwrite, else into new tensors."""
    if in_place:
        getattr(torch, f"_foreach_{op}_")(xs, *args, **kwargs)
        return xs
    return getattr(torch, f"_foreach_{op}")(xs, *args, **kwargs)


def _commit(dst: list[Tensor], new: list[Tensor], skip: Tensor | None) -> None:
    """dst <- new (rounded to dst's dtype); on a skipped step (`skip` true on the device) dst keeps its values."""
    if skip is None:
        torch._foreach_copy_(dst, new)
        return
    for t, v in zip(dst, new, strict=True):
        # Rounded to t's dtype first, so a kept t is never converted (a NaN keeps its bits); out=t: no temporary.
        torch.where(skip, t, v.to(t.dtype), out=t)
