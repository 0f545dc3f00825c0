"""The op schema, defined once, and its fake (meta) implementation for torch.compile.

`fasttrick::sgdw_` gets its CPU and CUDA kernels from the C++ extensions (csrc/); `fasttrick::sgdw_triton_`
has the same schema and runs the Triton kernel. Both mutate params, grads (AMP write-back) and buffers
in place and return nothing, so the fake implementation has nothing to compute: it only lets
torch.compile trace a step without a graph break.

Hyper-parameters come two ways, because eager and compiled steps need different things:
- eager: the floats `lr, momentum, dampening, weight_decay` are kernel launch arguments (no tensor to
  build or copy, no host sync; fp64 params compute with the exact doubles);
- compiled: a float argument of a custom op is specialised by Dynamo, so every new momentum value
  (OneCycleLR, CyclicLR) would compile a new graph. There `hyper`, a float64 tensor
  `[lr, momentum, dampening, weight_decay]` built inside the graph from the group's (dynamic) floats,
  replaces the four floats, which are then ignored.
`lr_tensor`, the caller's own one-element float32/float64 lr tensor, replaces the lr of either.
Momentum is on exactly when `momentum_buffers` is not empty (one buffer per param); the kernels check
that this agrees with the float `momentum` when no `hyper` is given.

Members: `hyper` may also be a float64 [K, 4] table, one row (lr, momentum, dampening, weight_decay) per
member. Each param's dim 0 is then K equal blocks, member k's being `p.unflatten(0, (K, -1))[k]` (and
the same of its grad and buffer), updated with row k: the result is a launch of its own per member, bit
for bit. A member whose momentum is 0 takes torch.optim.SGD's momentum-0 update and leaves its part of
the buffer as it was. The kernels take params whose member blocks are runs of consecutive elements
(`members_are_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Every backend function in ops/ takes these arguments, hyper-parameters by keyword (ops/dispatch.py): the
# op takes them keyword-only.
SGDW_SCHEMA = (
    "(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, *, float lr, float momentum, "
    "float dampening, float weight_decay, bool nesterov, bool maximize, bool decoupled_weight_decay, "
    "bool first_step, Tensor? lr_tensor=None, Tensor? hyper=None, Tensor? grad_scale=None, "
    "Tensor? found_inf=None) -> ()"
)

_library = torch.library.Library("fasttrick", "DEF")  # kept alive for the life of the process
for _name in ("sgdw_", "sgdw_triton_"):
    _library.define(_name + SGDW_SCHEMA)

    @torch.library.register_fake(f"fasttrick::{_name}")
    def _sgdw_fake(
        params,
        grads,
        momentum_buffers,
        *,
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
        decoupled_weight_decay,
        first_step,
        lr_tensor=None,
        hyper=None,
        grad_scale=None,
        found_inf=None,
    ) -> None:
        return None


def kernel_can_walk(param: Tensor, grad: Tensor, buf: Tensor | None = None) -> bool:
    """Whether the kernels (C++, CUDA, Triton) can update this tensor: they walk `numel` consecutive
    elements from each data pointer, so the param must be non-overlapping and dense (contiguous,
    channels-last, transposed, any permutation) and its grad and buffer laid out the same, strides of
    size-1 dimensions excepted (they never move the walk: a 1x1 convolution's channels-last buffer
    loaded from a contiguous checkpoint). The same rule as `same_layout` in csrc/sgdw_checks.h."""
    if param.layout is not torch.strided or grad.layout is not torch.strided:
        return False
    # The common cases first, in a few C calls: per tensor per step this is Python's whole cost.
    if param.is_contiguous() and grad.is_contiguous() and (buf is None or buf.is_contiguous()):
        return grad.shape == param.shape and (buf is None or buf.shape == param.shape)
    # The grad and buffer are asked with is_contiguous(), not by their strides: under torch.compile a grad's
    # strides are symbolic, and Dynamo (torch 2.14) fails on reading them.
    channels_last = torch.channels_last
    if (
        param.is_contiguous(memory_format=channels_last)
        and grad.is_contiguous(memory_format=channels_last)
        and (buf is None or buf.is_contiguous(memory_format=channels_last))
    ):
        return grad.shape == param.shape and (buf is None or buf.shape == param.shape)
    # Dense in some dimension order: contiguous once permuted outermost (largest stride) first.
    strides = param.stride()
    order = sorted(range(param.dim()), key=lambda d: strides[d], reverse=True)
    return all(t.shape == param.shape and t.permute(order).is_contiguous() for t in (param, grad, buf) if t is not None)


def members_are_blocks(param: Tensor, members: int) -> bool:
    """Whether each member's part of `param` (dim 0 split into `members` blocks) is a run of consecutive
    elements, as the kernels walk it: dim 0 outermost in memory (contiguous, channels-last). With one
    member, any tensor. The same rule as `members_are_blocks` in csrc/sgdw_checks.h."""
    if members == 1 or param.numel() == 0:
        return True
    return param.dim() >= 1 and param.shape[0] % members == 0 and param.shape[0] * param.stride(0) == param.numel()


def op_backend(op: Callable[..., None], eager: Callable[..., None] | None = None) -> Callable[..., None]:
    """The backend function (ops/dispatch.py, `SgdwBackend`) of a custom op: eager calls pass the float
    hyper-parameters as launch arguments (to `eager`, a direct Python impl that skips the dispatcher, if
    given); a call being compiled packs them into the `hyper` tensor, so new values (a momentum cycled by
    OneCycleLR) do not recompile: Dynamo traces the group's floats as graph inputs, as for torch.optim.SGD.
    A call that brings its own `hyper` (a member table) passes it as it is. Hyper-parameters by keyword."""

    def call(params, grads, momentum_buffers, *, lr, momentum, dampening, weight_decay, **rest) -> None:
        floats = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        if not torch.compiler.is_compiling():
            (eager or op)(params, grads, momentum_buffers, **floats, **rest)
            return
        if rest.get("hyper") is not None:
            op(params, grads, momentum_buffers, **floats, **rest)
            return
        device = params[0].device if params else torch.device("cpu")
        # Arithmetic on a tensor keeps a dynamic float symbolic; torch.tensor([...]) or torch.full would
        # specialise it (measured: 6 graphs for 6 momentum values, against 2 this way).
        one = torch.ones((), dtype=torch.float64, device=device)
        hyper = torch.stack([one * lr, one * momentum, one * dampening, one * weight_decay])
        zeros = dict(lr=0.0, momentum=0.0, dampening=0.0, weight_decay=0.0)
        op(params, grads, momentum_buffers, **zeros, **{**rest, "hyper": hyper})

    return call
