"""Triton multi-tensor FusedSGDW kernel: one launch per (device, dtype) group per step.

Layers (Liger-style): `_sgdw_kernel` (the math) -> `sgdw_triton_` (launcher: tables, grid) ->
`torch.ops.fasttrick.sgdw_triton_` (the op torch.compile sees; schema in ops/library.py).

One launch covers every tensor of the group: program `pid` updates BLOCK elements of tensor
`program_tensor[pid]` starting at `program_start[pid]`, with the tensor's addresses read from an int64
pointer table and cast with `.to(tl.pointer_type(...))`. The tables are built on the host once per
set of tensors and cached by their addresses and sizes, so steady-state steps allocate and copy
nothing (PyTorch's caching allocator hands `.grad` the same blocks step after step, even with
`zero_grad(set_to_none=True)`). Under TRITON_INTERPRET=1 the same kernel runs on CPU tensors, which is
how the numerics are tested on machines without a GPU.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import momentum_dtype

# 4096 elements per program: 16 fp32 elements per thread at 8 warps, i.e. four 16-byte loads per
# stream in flight per thread. ResNet-18 (11.17 M params) becomes ~2.8 K programs, about 21 per SM on
# an H100, enough to hide DRAM latency. Not yet tuned on a GPU.
BLOCK = 4096
NUM_WARPS = 8
# Address alignment (bytes) that lets the compiler emit vector loads.
_VECTOR_ALIGNMENT = 16

_TL_DTYPE = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}


@triton.jit
def _sgdw_kernel(
    pointer_table,  # int64 [3, n_tensors]: param, grad, buffer addresses
    numel_table,  # int64 [n_tensors]
    program_tensor,  # int32 [n_programs]
    program_start,  # int64 [n_programs]
    n_tensors,
    lr_ptr,
    grad_scale_ptr,
    found_inf_ptr,
    hyper_ptr,  # opmath [3]: momentum, 1 - dampening, weight_decay (a tensor keeps fp64 exact for fp64 params)
    PARAM: tl.constexpr,
    OPMATH: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    FIRST_STEP: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(program_tensor + pid)
    start = tl.load(program_start + pid)
    offsets = start + tl.arange(0, BLOCK)
    numel = tl.load(numel_table + t)
    if HAS_FOUND_INF:
        # A skipped AMP step has no valid element: every load and store below is masked off.
        numel = tl.where(tl.load(found_inf_ptr) == 0, numel, 0)
    p_ptrs = tl.load(pointer_table + t).to(tl.pointer_type(PARAM)) + offsets
    g_ptrs = tl.load(pointer_table + n_tensors + t).to(tl.pointer_type(PARAM)) + offsets
    b_ptrs = tl.load(pointer_table + 2 * n_tensors + t).to(tl.pointer_type(OPMATH)) + offsets
    if ALIGNED:
        # The addresses come from a table, so the compiler cannot see that they are 16-byte aligned
        # (the launcher checked): without this hint, and without the unmasked path below, sm_90 PTX
        # has only scalar ld.global.b32; with both, the full blocks use ld/st.global.v4.b32.
        p_ptrs = tl.multiple_of(p_ptrs, 16)
        g_ptrs = tl.multiple_of(g_ptrs, 16)
        b_ptrs = tl.multiple_of(b_ptrs, 16)
    lr = tl.load(lr_ptr).to(OPMATH)
    if start + BLOCK <= numel:
        _sgdw_block(
            p_ptrs,
            g_ptrs,
            b_ptrs,
            None,
            lr,
            grad_scale_ptr,
            hyper_ptr,
            PARAM,
            OPMATH,
            HAS_GRAD_SCALE,
            HAS_MOMENTUM,
            HAS_WEIGHT_DECAY,
            NESTEROV,
            MAXIMIZE,
            DECOUPLED,
            FIRST_STEP,
        )
    else:  # the tensor's tail, or a skipped step
        _sgdw_block(
            p_ptrs,
            g_ptrs,
            b_ptrs,
            offsets < numel,
            lr,
            grad_scale_ptr,
            hyper_ptr,
            PARAM,
            OPMATH,
            HAS_GRAD_SCALE,
            HAS_MOMENTUM,
            HAS_WEIGHT_DECAY,
            NESTEROV,
            MAXIMIZE,
            DECOUPLED,
            FIRST_STEP,
        )


@triton.jit
def _sgdw_block(
    p_ptrs,
    g_ptrs,
    b_ptrs,
    mask,  # None for a full block: unmasked accesses vectorise
    lr,
    grad_scale_ptr,
    hyper_ptr,
    PARAM: tl.constexpr,
    OPMATH: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    FIRST_STEP: tl.constexpr,
):
    """The update of ops/reference.py, step for step, on one block."""
    momentum = tl.load(hyper_ptr)
    one_minus_dampening = tl.load(hyper_ptr + 1)
    weight_decay = tl.load(hyper_ptr + 2)
    p = tl.load(p_ptrs, mask=mask).to(OPMATH)
    g = tl.load(g_ptrs, mask=mask).to(OPMATH)
    if HAS_GRAD_SCALE:
        g = g / tl.load(grad_scale_ptr).to(OPMATH)
        tl.store(g_ptrs, g.to(PARAM), mask=mask)
    d = g
    if MAXIMIZE:
        d = -g
    if HAS_WEIGHT_DECAY:
        if DECOUPLED:
            p = p * (1 - lr * weight_decay)
        else:
            d = d + weight_decay * p
    if HAS_MOMENTUM:
        if FIRST_STEP:
            b = d
        else:
            b = momentum * tl.load(b_ptrs, mask=mask) + one_minus_dampening * d
        tl.store(b_ptrs, b, mask=mask)
        if NESTEROV:
            d = d + momentum * b
        else:
            d = b
    p = p - lr * d
    tl.store(p_ptrs, p.to(PARAM), mask=mask)


@dataclass(frozen=True)
class _LaunchTables:
    pointer_table: Tensor
    numel_table: Tensor
    program_tensor: Tensor
    program_start: Tensor
    aligned: bool


_TABLE_CACHE: OrderedDict[tuple, _LaunchTables] = OrderedDict()
_TABLE_CACHE_SIZE = 16  # a few (device, dtype) groups x first/steady steps
_HYPER_CACHE: dict[tuple, Tensor] = {}


def _launch_tables(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor]) -> _LaunchTables:
    device = params[0].device
    # Zero-numel tensors own no program (a classic multi-tensor bug: pytorch#100701).
    live = [i for i, p in enumerate(params) if p.numel() > 0]
    pointers = [
        [params[i].data_ptr() for i in live],
        [grads[i].data_ptr() for i in live],
        [bufs[i].data_ptr() for i in live] if bufs else [0] * len(live),
    ]
    numels = [params[i].numel() for i in live]
    key = (device, *map(tuple, pointers), tuple(numels))
    tables = _TABLE_CACHE.get(key)
    if tables is not None:
        _TABLE_CACHE.move_to_end(key)
        return tables
    for i in live:
        _check_flat_layout(i, params[i], grads[i], bufs[i] if bufs else None)
    numel_table = torch.tensor(numels, dtype=torch.int64)
    programs_per_tensor = (numel_table + BLOCK - 1) // BLOCK
    program_tensor = torch.repeat_interleave(torch.arange(len(live), dtype=torch.int32), programs_per_tensor)
    first_program = torch.cumsum(programs_per_tensor, 0) - programs_per_tensor
    program_start = (torch.arange(len(program_tensor)) - first_program[program_tensor.long()]) * BLOCK
    tables = _LaunchTables(
        pointer_table=torch.tensor(pointers, dtype=torch.int64).to(device),
        numel_table=numel_table.to(device),
        program_tensor=program_tensor.to(device),
        program_start=program_start.to(device),
        aligned=all(ptr % _VECTOR_ALIGNMENT == 0 for row in pointers for ptr in row),
    )
    _TABLE_CACHE[key] = tables
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return tables


def _check_flat_layout(index: int, param: Tensor, grad: Tensor, buf: Tensor | None) -> None:
    """The kernel walks each tensor as numel consecutive elements: it must be dense, and param, grad
    and buffer must agree element for element (same strides)."""
    dense = param.is_contiguous() or (param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last))
    same = grad.stride() == param.stride() and (buf is None or buf.stride() == param.stride())
    if not (dense and same):
        raise ValueError(
            f"the triton backend needs param {index} (shape {tuple(param.shape)}, strides {param.stride()}) to be "
            f"contiguous or channels-last, with its grad (strides {grad.stride()}) and momentum buffer laid out the same"
        )


def _hyper_tensor(device: torch.device, opmath: torch.dtype, momentum: float, dampening: float, wd: float) -> Tensor:
    key = (device, opmath, momentum, dampening, wd)
    hyper = _HYPER_CACHE.get(key)
    if hyper is None:
        hyper = torch.tensor([momentum, 1.0 - dampening, wd], dtype=opmath).to(device)
        _HYPER_CACHE[key] = hyper
    return hyper


def sgdw_triton_(
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
    if not params:
        return
    dtype = params[0].dtype
    if dtype not in _TL_DTYPE:
        raise TypeError(f"the triton backend supports float32/float16/bfloat16/float64 params, got {dtype}")
    tables = _launch_tables(params, grads, momentum_buffers)
    n_programs = tables.program_tensor.numel()
    if n_programs == 0:
        return
    opmath = momentum_dtype(dtype)
    _sgdw_kernel[(n_programs,)](
        tables.pointer_table,
        tables.numel_table,
        tables.program_tensor,
        tables.program_start,
        tables.numel_table.numel(),
        lr,
        grad_scale if grad_scale is not None else lr,  # unread unless HAS_GRAD_SCALE
        found_inf if found_inf is not None else lr,  # unread unless HAS_FOUND_INF
        _hyper_tensor(params[0].device, opmath, momentum, dampening, weight_decay),
        PARAM=_TL_DTYPE[dtype],
        OPMATH=_TL_DTYPE[opmath],
        HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
        HAS_MOMENTUM=momentum != 0,
        HAS_WEIGHT_DECAY=weight_decay != 0,
        NESTEROV=nesterov,
        MAXIMIZE=maximize,
        DECOUPLED=decoupled_weight_decay,
        FIRST_STEP=first_step,
        ALIGNED=tables.aligned,
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )


torch.library.impl("fasttrick::sgdw_triton_", ("cpu", "cuda"))(sgdw_triton_)
