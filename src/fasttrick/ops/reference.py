"""Pure-PyTorch FusedSGDW update: the oracle every backend is tested against, and the fallback
that runs on any device.

Written as plainly as torch.optim.SGD's for-loop path (`_single_tensor_sgd`), one tensor at a time,
in the arithmetic dtype (fp32 for fp32/fp16/bf16 params, fp64 for fp64). Per element, in order:
  1. g = g / grad_scale                  (AMP; the unscaled g is stored back into .grad)
  2. g = -g                              (maximize)
  3. g = g + wd * p                      (coupled L2, == torch.optim.SGD)
     p = p * (1 - lr * wd)               (decoupled_weight_decay)
  4. b = g on the tensor's first step, else b = momentum * b + (1 - dampening) * g
  5. u = g + momentum * b (nesterov) else b
  6. p = p - lr * u
A step with found_inf != 0 changes nothing; it is applied with torch.where, so there is no host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor


def momentum_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 params keep an fp32 momentum buffer; fp32 and fp64 keep their own precision."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def sgdw_reference_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    lr: Tensor,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    first_step: bool,
) -> None:
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        opmath = momentum_dtype(param.dtype)
        lr_ = lr.to(opmath)
        p = param.to(opmath)
        g = grad.to(opmath)
        if grad_scale is not None:
            g = g / grad_scale.to(opmath)
        d = -g if maximize else g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * (1 - lr_ * weight_decay)
            else:
                d = d.add(p, alpha=weight_decay)
        b = None
        if momentum != 0:
            b = d.clone() if first_step else momentum_buffers[i] * momentum + d * (1 - dampening)
            d = d.add(b, alpha=momentum) if nesterov else b
        p = p - lr_ * d

        if found_inf is None:
            _store(param, p)
            if b is not None:
                _store(momentum_buffers[i], b)
            if grad_scale is not None:
                _store(grad, g)
        else:
            skip = found_inf.to(param.device) != 0
            _store(param, torch.where(skip, param.to(opmath), p))
            if b is not None:
                _store(momentum_buffers[i], torch.where(skip, momentum_buffers[i], b))
            if grad_scale is not None:
                _store(grad, torch.where(skip, grad.to(opmath), g))


def _store(dst: Tensor, value: Tensor) -> None:
    dst.copy_(value)  # copy_ rounds to dst's dtype (round-to-nearest-even) and keeps dst's strides
