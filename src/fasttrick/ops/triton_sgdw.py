"""Triton multi-tensor FusedSGDW kernel: one launch per (device, dtype) group per step.

Layers (Liger-style): `_sgdw_kernel` (the math) -> `sgdw_triton_` (launcher: tables, grid) ->
`torch.ops.fasttrick.sgdw_triton_` (the op torch.compile sees; schema in ops/library.py).

One launch covers every tensor of the group: program `pid` updates BLOCK elements of tensor
`program_tensor[pid]` starting at `program_start[pid]`, with the tensor's addresses read from an int64
pointer table and cast with `.to(tl.pointer_type(...))`. With members (each tensor's dim 0 split into K
blocks, each with its own row of the hyper-parameter table), a program serves one member's block,
`program_member[pid]`, and reads that member's row. The tables are built on the host once per
set of tensors and cached by their addresses and sizes, so steady-state steps allocate and copy
nothing (PyTorch's caching allocator hands `.grad` the same blocks step after step, even with
`zero_grad(set_to_none=True)`). Under TRITON_INTERPRET=1 the same kernel runs on CPU tensors, which is
how the numerics are tested on machines without a GPU.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import momentum_dtype
from .triton_checks import _check_arguments, _check_launchable

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


# No value specialisation of the bits (== 1, divisible by 16): a new lr must not compile a new kernel.
@triton.jit(do_not_specialize=["lr_bits", "momentum_bits", "one_minus_dampening_bits", "weight_decay_bits"])
def _sgdw_kernel(
    pointer_table,  # int64 [3, n_tensors]: param, grad, buffer addresses
    member_numel_table,  # int64 [n_tensors]: elements per member (the tensor's numel without members)
    program_tensor,  # int32 [n_programs]
    program_start,  # int64 [n_programs]: the first element, counted from the tensor's start
    program_member,  # int32 [n_programs], read when HAS_MEMBERS
    n_tensors,
    # The float hyper-parameters as the int64 bits of their doubles: Triton passes a Python float as
    # fp32, which would round an fp64 param's lr (0.1 -> 0.10000000149); bits keep the double exact.
    lr_bits,
    momentum_bits,
    one_minus_dampening_bits,
    weight_decay_bits,
    lr_ptr,  # the caller's lr tensor (fp32 or fp64), read when LR_FROM_PTR
    hyper_ptr,  # fp64 rows [lr, momentum, dampening, weight_decay]: one, or one per member; read when HYPER_FROM_PTR
    grad_scale_ptr,
    found_inf_ptr,
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
    LR_FROM_PTR: tl.constexpr,
    HYPER_FROM_PTR: tl.constexpr,
    HAS_MEMBERS: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(program_tensor + pid)
    start = tl.load(program_start + pid)
    offsets = start + tl.arange(0, BLOCK)
    if HAS_MEMBERS:
        member = tl.load(program_member + pid)
        end = (member + 1) * tl.load(member_numel_table + t)  # this member's block ends here
        hyper_ptr += 4 * member
    else:
        end = tl.load(member_numel_table + t)
    if HAS_FOUND_INF:
        # A skipped AMP step has no valid element: every load and store below is masked off.
        end = tl.where(tl.load(found_inf_ptr) == 0, end, 0)
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
    if HYPER_FROM_PTR:
        lr = tl.load(hyper_ptr).to(OPMATH)
        momentum = tl.load(hyper_ptr + 1).to(OPMATH)
        one_minus_dampening = (1.0 - tl.load(hyper_ptr + 2)).to(OPMATH)  # in fp64, as on the host
        weight_decay = tl.load(hyper_ptr + 3).to(OPMATH)
    else:
        lr = _from_bits(lr_bits, OPMATH)
        momentum = _from_bits(momentum_bits, OPMATH)
        one_minus_dampening = _from_bits(one_minus_dampening_bits, OPMATH)
        weight_decay = _from_bits(weight_decay_bits, OPMATH)
    if LR_FROM_PTR:
        lr = tl.load(lr_ptr).to(OPMATH)
    if start + BLOCK <= end:
        _sgdw_block(
            p_ptrs,
            g_ptrs,
            b_ptrs,
            None,
            lr,
            momentum,
            one_minus_dampening,
            weight_decay,
            grad_scale_ptr,
            PARAM,
            OPMATH,
            HAS_GRAD_SCALE,
            HAS_MOMENTUM,
            HAS_WEIGHT_DECAY,
            NESTEROV,
            MAXIMIZE,
            DECOUPLED,
            FIRST_STEP,
            HYPER_FROM_PTR,
            HAS_MEMBERS,
        )
    else:  # the tensor's (member's) tail, or a skipped step
        _sgdw_block(
            p_ptrs,
            g_ptrs,
            b_ptrs,
            offsets < end,
            lr,
            momentum,
            one_minus_dampening,
            weight_decay,
            grad_scale_ptr,
            PARAM,
            OPMATH,
            HAS_GRAD_SCALE,
            HAS_MOMENTUM,
            HAS_WEIGHT_DECAY,
            NESTEROV,
            MAXIMIZE,
            DECOUPLED,
            FIRST_STEP,
            HYPER_FROM_PTR,
            HAS_MEMBERS,
        )


@triton.jit
def _from_bits(bits, OPMATH: tl.constexpr):
    # An argument that fits int32 (0.0, denormals) arrives as i32: widen before the bitcast.
    return bits.to(tl.int64).to(tl.float64, bitcast=True).to(OPMATH)


@triton.jit
def _sgdw_block(
    p_ptrs,
    g_ptrs,
    b_ptrs,
    mask,  # None for a full block: unmasked accesses vectorise
    lr,
    momentum,
    one_minus_dampening,
    weight_decay,
    grad_scale_ptr,
    PARAM: tl.constexpr,
    OPMATH: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    FIRST_STEP: tl.constexpr,
    WEIGHT_DECAY_MAY_BE_ZERO: tl.constexpr,
    MOMENTUM_MAY_BE_ZERO: tl.constexpr,
):
    """The update of ops/reference.py, step for step, on one block."""
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
        elif WEIGHT_DECAY_MAY_BE_ZERO:  # a compiled step's value: skip it when 0, as torch does (inf * 0)
            d = tl.where(weight_decay != 0, d + weight_decay * p, d)
        else:
            d = d + weight_decay * p
    if HAS_MOMENTUM:
        if MOMENTUM_MAY_BE_ZERO:  # a member's momentum 0: torch's momentum-free update, its buffer left alone
            if momentum != 0:
                d = _momentum_direction(b_ptrs, mask, d, momentum, one_minus_dampening, NESTEROV, FIRST_STEP)
        else:
            d = _momentum_direction(b_ptrs, mask, d, momentum, one_minus_dampening, NESTEROV, FIRST_STEP)
    p = p - lr * d
    tl.store(p_ptrs, p.to(PARAM), mask=mask)


@triton.jit
def _momentum_direction(
    b_ptrs, mask, d, momentum, one_minus_dampening, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr
):
    """Updates the block's buffer (b = d on a first step, else momentum * b + (1 - dampening) * d) and
    returns the update direction: d + momentum * b with nesterov, else b."""
    if FIRST_STEP:
        b = d
    else:
        b = momentum * tl.load(b_ptrs, mask=mask) + one_minus_dampening * d
    tl.store(b_ptrs, b, mask=mask)
    if NESTEROV:
        return d + momentum * b
    return b


@dataclass(frozen=True)
class _LaunchTables:
    pointer_table: Tensor
    member_numel_table: Tensor
    program_tensor: Tensor
    program_start: Tensor
    program_member: Tensor
    aligned: bool


_TABLE_CACHE: OrderedDict[tuple, _LaunchTables] = OrderedDict()
_TABLE_CACHE_SIZE = 16  # a few (device, dtype) groups x first/steady steps


def _launch_tables(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], members: int) -> _LaunchTables:
    device = params[0].device
    # Zero-numel tensors own no program (a classic multi-tensor bug: pytorch#100701).
    live = [i for i, p in enumerate(params) if p.numel() > 0]
    pointers = [
        [params[i].data_ptr() for i in live],
        [grads[i].data_ptr() for i in live],
        [bufs[i].data_ptr() for i in live] if bufs else [0] * len(live),
    ]
    numels = [params[i].numel() for i in live]
    key = (device, members, *map(tuple, pointers), tuple(numels))
    tables = _TABLE_CACHE.get(key)
    if tables is not None:
        _TABLE_CACHE.move_to_end(key)
        return tables
    for i in live:
        _check_launchable(i, device, params[i], grads[i], bufs[i] if bufs else None, members)
    # Each member's block starts a program of its own: tensor t has `members` runs of programs_per_member.
    member_numel = torch.tensor(numels, dtype=torch.int64) // members
    programs_per_member = (member_numel + BLOCK - 1) // BLOCK
    programs_per_tensor = programs_per_member * members
    program_tensor = torch.repeat_interleave(torch.arange(len(live), dtype=torch.int32), programs_per_tensor)
    tensor_of_program = program_tensor.long()
    first_program = torch.cumsum(programs_per_tensor, 0) - programs_per_tensor
    local = torch.arange(len(program_tensor)) - first_program[tensor_of_program]  # the program's index in its tensor
    per_member = programs_per_member[tensor_of_program]
    program_member = local // per_member
    program_start = program_member * member_numel[tensor_of_program] + (local % per_member) * BLOCK
    # Vector accesses need every program's start 16-byte aligned: the addresses, and each member's block size.
    dtypes = (params[0].dtype, params[0].dtype, momentum_dtype(params[0].dtype))
    block_bytes = [int(n) * dtype.itemsize for n in member_numel.tolist() for dtype in dtypes]
    tables = _LaunchTables(
        pointer_table=torch.tensor(pointers, dtype=torch.int64).to(device),
        member_numel_table=member_numel.to(device),
        program_tensor=program_tensor.to(device),
        program_start=program_start.to(device),
        program_member=program_member.to(device=device, dtype=torch.int32),
        aligned=all(ptr % _VECTOR_ALIGNMENT == 0 for row in pointers for ptr in row)
        and (members == 1 or all(size % _VECTOR_ALIGNMENT == 0 for size in block_bytes)),
    )
    _TABLE_CACHE[key] = tables
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return tables


def _f64_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def sgdw_triton_(
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
    if not params:
        return
    dtype = params[0].dtype
    has_momentum = bool(momentum_buffers)
    _check_arguments(params[0], momentum, has_momentum, len(momentum_buffers), lr_tensor, hyper, grad_scale, found_inf)
    per_member = hyper is not None and hyper.dim() == 2  # a member table: one row per member
    tables = _launch_tables(params, grads, momentum_buffers, hyper.shape[0] if hyper is not None and per_member else 1)
    n_programs = tables.program_tensor.numel()
    if n_programs == 0:
        return
    opmath = momentum_dtype(dtype)
    unread = tables.pointer_table  # stands in for an absent tensor argument: the constexpr flags skip it
    _sgdw_kernel[(n_programs,)](
        tables.pointer_table,
        tables.member_numel_table,
        tables.program_tensor,
        tables.program_start,
        tables.program_member,
        tables.member_numel_table.numel(),
        # 1 - dampening in double, as torch's `alpha=1 - dampening`
        *(_f64_bits(value) for value in (lr, momentum, 1.0 - dampening, weight_decay)),
        lr_tensor if lr_tensor is not None else unread,
        hyper if hyper is not None else unread,
        grad_scale if grad_scale is not None else unread,
        found_inf if found_inf is not None else unread,
        PARAM=_TL_DTYPE[dtype],
        OPMATH=_TL_DTYPE[opmath],
        HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
        HAS_MOMENTUM=has_momentum,
        HAS_WEIGHT_DECAY=hyper is not None or weight_decay != 0,
        NESTEROV=nesterov,
        MAXIMIZE=maximize,
        DECOUPLED=decoupled_weight_decay,
        FIRST_STEP=first_step,
        LR_FROM_PTR=lr_tensor is not None,
        HYPER_FROM_PTR=hyper is not None,
        HAS_MEMBERS=per_member,
        ALIGNED=tables.aligned,
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )


torch.library.impl("fasttrick::sgdw_triton_", ("cpu", "cuda"))(sgdw_triton_)
