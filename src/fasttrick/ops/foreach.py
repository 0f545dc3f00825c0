"""FusedSGDW update with torch's multi-tensor `_foreach_*` ops: few launches, no custom kernel.

The fallback for devices without the C++/CUDA extension or Triton. Same math and order as
ops/reference.py, computed out of place on whole lists (about 10 passes over memory instead of one;
this backend buys launch count, not bandwidth), then written back with one `_foreach_copy_` per list,
or per tensor through torch.where when an AMP step may have to be skipped (no host sync).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import momentum_dtype


def sgdw_foreach_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
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
    if not params:
        return
    if hyper is not None:  # the op schema's compiled form (ops/library.py): plain Python tracing needs none
        lr, momentum, dampening, weight_decay = hyper.tolist()
    opmath = momentum_dtype(params[0].dtype)
    lr_ = lr_tensor.to(opmath).reshape(()) if lr_tensor is not None else lr  # a 0-d temporary
    p = [t.to(opmath) for t in params]
    g = [t.to(opmath) for t in grads]
    if grad_scale is not None:
        g = torch._foreach_div(g, grad_scale.to(opmath))
    d = torch._foreach_neg(g) if maximize else g
    if weight_decay != 0:
        if decoupled_weight_decay:
            p = torch._foreach_mul(p, 1 - lr_ * weight_decay)
        else:
            d = torch._foreach_add(d, p, alpha=weight_decay)
    b: list[Tensor] = []
    if momentum_buffers:
        if first_step:
            b = torch._foreach_mul(d, 1.0)  # a copy: d may alias the user's grads
        else:
            b = torch._foreach_mul(momentum_buffers, momentum)
            torch._foreach_add_(b, d, alpha=1 - dampening)
        d = torch._foreach_add(d, b, alpha=momentum) if nesterov else b
    p = torch._foreach_sub(p, torch._foreach_mul(d, lr_))

    results = [(params, p), (momentum_buffers, b), (grads, g if grad_scale is not None else [])]
    for dst, new in results:
        if not new:
            continue
        if found_inf is None:
            torch._foreach_copy_(dst, new)
        else:
            skip = found_inf.to(dst[0].device) != 0
            for t, v in zip(dst, new, strict=True):
                t.copy_(torch.where(skip, t.to(v.dtype), v))
