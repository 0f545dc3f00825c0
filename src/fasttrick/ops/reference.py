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

Members (`hyper` a [K, 4] table, see ops/library.py): each tensor is viewed as [K, ...] along dim 0 and
every member's row is broadcast over its block, all members in the same ops. Each op is the float
path's with a tensor in place of the float (`addcmul(d, p, wd)` for `d.add(p, alpha=wd)`), so a member
gets exactly the result of a step of its own; `torch.where` keeps a member with weight decay 0 or
momentum 0 on torch's path for that value (no `0 * p`, no buffer). No host sync, nothing to recompile
when the table changes.
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
    if hyper is not None and hyper.dim() == 2:
        _sgdw_members_(
            params, grads, momentum_buffers, hyper, nesterov, maximize, decoupled_weight_decay, first_step,
            lr_tensor, grad_scale, found_inf,
        )  # fmt: skip
        return
    if hyper is not None:  # the op schema's compiled form (ops/library.py): plain Python tracing needs none
        lr, momentum, dampening, weight_decay = hyper.tolist()
    # len(), not bool(list): torch 2.11's Dynamo cannot trace bool() of a list; it breaks the graph there,
    # which makes momentum a constant of the resumed frame (a recompile per new value under OneCycleLR).
    has_momentum = len(momentum_buffers) > 0
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        opmath = momentum_dtype(param.dtype)
        lr_ = lr_tensor.to(opmath).reshape(()) if lr_tensor is not None else lr  # a 0-d temporary
        p = param.to(opmath)
        if torch.is_grad_enabled():  # a differentiable step: `param` is written below, autograd keeps its value
            p = p.clone()
        # Any layout works here: arithmetic makes new tensors and _store copies into the destination's
        # strides, so this is also FusedSGDW's per-tensor path for what the kernels cannot walk.
        g = (grad.to_dense() if grad.is_sparse else grad).to(opmath)
        if grad_scale is not None:
            g = g / grad_scale.to(opmath)
        d = -g if maximize else g
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * (1 - lr_ * weight_decay)
            else:
                d = d.add(p, alpha=weight_decay)
        b = None
        if has_momentum:
            # A new buffer is detached from the graph, as torch.optim.SGD's (differentiable steps: identical grads).
            b = d.detach().clone() if first_step else momentum_buffers[i] * momentum + d * (1 - dampening)
            d = d.add(b, alpha=momentum) if nesterov else b
        p = p - lr_ * d

        _store_step(param, grad, momentum_buffers[i] if b is not None else None, p, g, b, grad_scale, found_inf)


def _sgdw_members_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    table: Tensor,
    nesterov: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    first_step: bool,
    lr_tensor: Tensor | None,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """The update with one row of `table` (float64 [K, 4]: lr, momentum, dampening, weight_decay) per member."""
    if not params:
        return
    members = table.shape[0]
    has_momentum = len(momentum_buffers) > 0
    lr, momentum, dampening, weight_decay = table.to(params[0].device).unbind(1)
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        opmath = momentum_dtype(param.dtype)
        shape = (members,) + (1,) * param.dim()  # a member's value broadcast over its block of the [K, ...] view

        def column(values: Tensor, shape: tuple[int, ...] = shape, opmath: torch.dtype = opmath) -> Tensor:
            return values.to(opmath).view(shape)  # each double cast to opmath, as a float argument is

        lr_ = lr_tensor.to(opmath).reshape(()) if lr_tensor is not None else column(lr)
        p = param.to(opmath).unflatten(0, (members, -1))
        g = (grad.to_dense() if grad.is_sparse else grad).to(opmath).unflatten(0, (members, -1))
        if grad_scale is not None:
            g = g / grad_scale.to(opmath)
        d = -g if maximize else g
        if decoupled_weight_decay:
            # 1 - lr * wd in double, as the float path's Python arithmetic (with an lr tensor: in opmath, as there).
            p = p * (1 - lr_ * column(weight_decay) if lr_tensor is not None else column(1 - lr * weight_decay))
        else:
            d = torch.where((weight_decay != 0).view(shape), torch.addcmul(d, p, column(weight_decay)), d)
        b = None
        if has_momentum:
            kept = momentum_buffers[i].unflatten(0, (members, -1))
            m = column(momentum)
            b = d if first_step else kept * m + d * column(1 - dampening)
            on = (momentum != 0).view(shape)  # momentum 0: torch's momentum-free update, the buffer left alone
            d = torch.where(on, torch.addcmul(d, b, m) if nesterov else b, d)
            b = torch.where(on, b, kept).flatten(0, 1)
        p = p - lr_ * d
        buf = momentum_buffers[i] if has_momentum else None
        _store_step(param, grad, buf, p.flatten(0, 1), g.flatten(0, 1), b, grad_scale, found_inf)


def _store_step(
    param: Tensor,
    grad: Tensor,
    buf: Tensor | None,
    p: Tensor,
    g: Tensor,
    b: Tensor | None,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """Writes a tensor's step: the new param, buffer and (AMP) unscaled grad, or nothing on a skipped step."""
    skip = None if found_inf is None else found_inf.to(param.device) != 0
    _store(param, p, skip)
    if buf is not None and b is not None:
        _store(buf, b, skip)
    if grad_scale is not None:
        opmath = momentum_dtype(param.dtype)
        if grad.is_sparse:  # the unscaled values go back into the sparse grad itself
            values = grad._values()
            _store(values, values.to(opmath) / grad_scale.to(opmath), skip)
        else:
            _store(grad, g, skip)


def _store(dst: Tensor, value: Tensor, skip: Tensor | None) -> None:
    """dst = value, or unchanged where an AMP step is skipped (torch.where: no host sync). copy_ rounds
    to dst's dtype (round-to-nearest-even) and keeps dst's strides."""
    dst.copy_(value if skip is None else torch.where(skip, dst.to(value.dtype), value))
