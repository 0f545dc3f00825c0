"""The CUDA kernel's logic, checked on the CPU, and the architectures the built CUDA extension serves.

csrc/sgdw_multi_tensor.h holds what one thread of the multi-tensor kernel does and how a group is cut
into launches, as host + device code. csrc/tests/sgdw_emulate.cpp compiles that same code with g++ and
runs every block and thread of every planned launch on CPU tensors; here it is compared with the
Python oracle (ops/reference.py). Small chunk sizes and SM counts put chunk and launch boundaries
inside small tensors, so the emulation stays fast.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

from fasttrick.ops.reference import momentum_dtype, sgdw_reference_

from sgdw_helpers import FP32_TOL

CSRC = Path(__file__).resolve().parents[1] / "csrc"

# [chunk_granule, max_chunk, blocks_per_sm, max_chunks_per_launch]: chunks of at most 12 elements.
SMALL_LIMITS = [4, 12, 2, 1 << 30]
CUDA_LIMITS: list[int] = []  # the emulator then uses the CUDA build's own kCudaLaunchLimits
# Sizes on both sides of the 12-element chunks (and of the 4-element vector), a 0-dim and empty tensors.
SHAPES = [(0,), (1,), (3,), (12,), (13,), (25,), (4, 7), (), (0, 5), (97,)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]

HYPER = dict(
    momentum=0.9,
    dampening=0.0,
    weight_decay=1e-2,
    nesterov=False,
    maximize=False,
    decoupled_weight_decay=False,
)
VARIANTS = {
    "momentum": {},
    "nesterov": dict(nesterov=True),
    "decoupled_weight_decay": dict(decoupled_weight_decay=True, weight_decay=0.1),
    "maximize": dict(maximize=True),
    "dampening": dict(dampening=0.3),
    "momentum_0": dict(momentum=0.0),
    "grad_scale": dict(grad_scale=1024.0),
    "lr_as_launch_argument": dict(lr_on_device=False),
}


@pytest.fixture(scope="module")
def emulate():
    """torch.ops.fasttrick_emulate.sgdw_, built once into the torch extensions cache (about 4 s of g++)."""
    from torch.utils import cpp_extension

    if torch.__version__ < TorchVersion("2.10"):
        pytest.skip("the emulator uses torch's stable C++ ABI with tensor lists (torch >= 2.10)")
    cpp_extension.load(
        name="fasttrick_cuda_kernel_emulator",
        sources=[str(CSRC / "tests" / "sgdw_emulate.cpp")],
        extra_include_paths=[str(CSRC)],
        # -O1: the emulated groups are small. The target version keeps the harness to the stable ABI of
        # torch 2.10 (so the device stack's 2.11 builds it too) and bans ATen's slower headers.
        extra_cflags=["-O1", f"-DTORCH_TARGET_VERSION={2 << 56 | 10 << 48:#x}"],
        is_python_module=False,
    )
    return torch.ops.fasttrick_emulate.sgdw_


def _tensor(shape, dtype, gen, misaligned=False):
    """A random tensor; misaligned: one element past an allocation's start, so no vector access fits it."""
    n = math.prod(shape)
    if misaligned:
        return torch.randn(n + 1, generator=gen).to(dtype)[1:].view(shape)
    return torch.randn(shape, generator=gen).to(dtype)


def _clones(tensors):
    return [t.clone() for t in tensors]


def run_against_reference(
    emulate,
    shapes,
    dtype,
    *,
    steps=2,
    sm_count=2,
    limits=SMALL_LIMITS,
    misaligned: dict[str, set[int]] | None = None,
    grad_scale: float | None = None,
    lr_on_device=True,
    **hyper,
):
    """Runs `steps` steps (the first a first step) through the emulated kernel and the oracle; returns the
    plans, one [tensors, blocks, aligned, chunk_size] row per launch per step."""
    hyper = {**HYPER, **hyper}
    misaligned = misaligned or {}
    gen = torch.Generator().manual_seed(0)
    has_momentum = hyper["momentum"] != 0
    params = [_tensor(s, dtype, gen, i in misaligned.get("param", ())) for i, s in enumerate(shapes)]
    bufs = (
        [_tensor(s, momentum_dtype(dtype), gen, i in misaligned.get("buf", ())) for i, s in enumerate(shapes)]
        if has_momentum
        else []
    )
    ref_params, ref_bufs = _clones(params), _clones(bufs)
    scale = None if grad_scale is None else torch.tensor(grad_scale)
    plans = []
    for step in range(steps):
        grads = [_tensor(s, dtype, gen, i in misaligned.get("grad", ())) for i, s in enumerate(shapes)]
        if scale is not None:
            grads = [(g.double() * grad_scale).to(dtype) for g in grads]
        ref_grads = _clones(grads)
        lr = 0.05 * (step + 1)
        # With lr on the device the launch argument is NaN: any use of it instead would show.
        plan = emulate(
            params,
            grads,
            bufs,
            math.nan if lr_on_device else lr,
            torch.tensor(lr) if lr_on_device else None,
            scale,
            None,
            first_step=step == 0,
            sm_count=sm_count,
            limits=limits,
            **hyper,
        )
        plans.append([plan[i : i + 4] for i in range(0, len(plan), 4)])
        sgdw_reference_(ref_params, ref_grads, ref_bufs, lr=lr, grad_scale=scale, first_step=step == 0, **hyper)
        tol = FP32_TOL if dtype == torch.float32 else {}  # fp16/bf16/fp64: torch.testing's per-dtype defaults
        buf_tol = FP32_TOL if momentum_dtype(dtype) == torch.float32 else {}
        for i in range(len(shapes)):
            where = f"step {step}, tensor {i} {shapes[i]}"
            torch.testing.assert_close(params[i], ref_params[i], **tol, msg=lambda m, w=where: f"param, {w}: {m}")
            if has_momentum:
                torch.testing.assert_close(bufs[i], ref_bufs[i], **buf_tol, msg=lambda m, w=where: f"buf, {w}: {m}")
            # Unscaled grads are written back with a grad scale, and left alone without one.
            torch.testing.assert_close(grads[i], ref_grads[i], **tol, msg=lambda m, w=where: f"grad, {w}: {m}")
    return plans


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_update_matches_reference(emulate, dtype, variant):
    plans = run_against_reference(emulate, SHAPES, dtype, **VARIANTS[variant])
    # 8 non-empty tensors (180 elements) in 12-element chunks: 1+1+1+2+3+3+1+9 blocks, all aligned.
    assert plans == [[[8, 21, 1, 12]]] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_chunks_longer_than_a_block_iteration(emulate, dtype):
    # One SM, one block per SM: chunk = the whole group, capped at 2052 elements, so a thread's loop
    # takes two and three turns of 256 threads x 4 elements, and the vector tail ends mid-chunk.
    plans = run_against_reference(emulate, [(5000,), (1030,), (3,)], dtype, sm_count=1, limits=[4, 2052, 1, 1 << 30])
    assert plans[0] == [[3, 3 + 1 + 1, 1, 2052]]


def test_more_than_512_tensors_take_several_launches(emulate):
    shapes = [(i % 7,) for i in range(1100)]  # every 7th is empty and owns no chunk
    non_empty = sum(1 for (n,) in shapes if n)
    plans = run_against_reference(emulate, shapes, torch.float32, steps=1)
    assert plans[0] == [[512, 512, 1, 12], [non_empty - 512, non_empty - 512, 1, 12]]


def test_chunk_limit_ends_a_launch_inside_a_tensor(emulate):
    # At most 5 chunks per launch: the third tensor's first chunk ends launch 1, its other 4 fill launch 2.
    plans = run_against_reference(emulate, [(30,), (7,), (50,)], torch.float32, limits=[4, 12, 2, 5])
    assert plans[0] == [[3, 5, 1, 12], [1, 4, 1, 12]]


@pytest.mark.parametrize("which", ["param", "grad", "buf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_tensor_takes_the_scalar_path(emulate, dtype, which):
    # Three chunks per launch: tensor 4, one element off its allocation, sends the second launch down the
    # scalar path; the first keeps its vector accesses (the host emulation throws on a misaligned one).
    plans = run_against_reference(emulate, [(9,)] * 6, dtype, limits=[4, 12, 2, 3], misaligned={which: {4}})
    assert plans[0] == [[3, 3, 1, 12], [3, 3, 0, 12]]


@pytest.mark.parametrize("first_step", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_found_inf_changes_nothing(emulate, dtype, first_step):
    gen = torch.Generator().manual_seed(0)
    params = [_tensor(s, dtype, gen) for s in SHAPES]
    grads = [_tensor(s, dtype, gen) for s in SHAPES]
    bufs = [_tensor(s, torch.float32, gen) for s in SHAPES]
    before = [_clones(ts) for ts in (params, grads, bufs)]
    emulate(params, grads, bufs, 0.1, torch.tensor([0.1]), torch.tensor([1024.0]), torch.tensor([1.0]),
            first_step=first_step, sm_count=2, limits=SMALL_LIMITS, **HYPER)  # fmt: skip
    for now, then in zip((params, grads, bufs), before, strict=True):
        for a, b in zip(now, then, strict=True):
            assert torch.equal(a, b)


# The CUDA build's limits: about 8 blocks per SM, chunks a multiple of 1024 elements, at most 65536.
@pytest.mark.parametrize(
    ("sm_count", "chunk_size", "blocks"), [(1, 65536, 10 + 1 + 2), (4, 21504, 28 + 1 + 4), (132, 1024, 586 + 1 + 69)]
)
def test_cuda_launch_limits_size_chunks_from_the_sm_count(emulate, sm_count, chunk_size, blocks):
    plans = run_against_reference(
        emulate, [(600_000,), (5,), (70_000,)], torch.float32, steps=1, sm_count=sm_count, limits=CUDA_LIMITS
    )
    assert plans[0] == [[3, blocks, 1, chunk_size]]


# ---- the built CUDA extension ----

REQUIRED_SASS = {80, 86, 89, 90}  # A100, RTX 30xx/A10, RTX 40xx/L4, H100/H200 (setup.py's default list)


def _cuda_extension_path() -> Path:
    spec = importlib.util.find_spec("fasttrick._C_cuda")
    if spec is None or spec.origin is None:
        pytest.skip("fasttrick._C_cuda is not built (python setup.py build_ext --inplace with nvcc)")
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        pytest.skip("TORCH_CUDA_ARCH_LIST is set: this checks the default architecture list")
    return Path(spec.origin)


def _cuobjdump(*args: str) -> str:
    import triton

    candidates = [
        shutil.which("cuobjdump"),
        os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
        os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"),
    ]
    tool = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if tool is None:
        pytest.skip(f"no cuobjdump (looked in {candidates})")
    return subprocess.run([tool, *args], check=True, capture_output=True, text=True).stdout


def test_cuda_extension_serves_every_target_architecture():
    so = _cuda_extension_path()
    sass = {int(a) for a in re.findall(r"\.sm_(\d+)\.cubin", _cuobjdump("--list-elf", str(so)))}
    ptx = {int(a) for a in re.findall(r"\.sm_(\d+)\.ptx", _cuobjdump("--list-ptx", str(so)))}
    assert sass >= REQUIRED_SASS, f"{so.name} has SASS for sm_{sorted(sass)}, needs sm_{sorted(REQUIRED_SASS)}"
    assert ptx and max(ptx) >= max(REQUIRED_SASS), f"{so.name} has PTX for sm_{sorted(ptx)}; newer GPUs need 9.0's"


def test_aligned_fp32_kernels_use_16_byte_vector_accesses():
    """The vector path survives compilation: LDG/STG.E.128 in the aligned fp32 kernels' sm_90 SASS only."""
    so = _cuda_extension_path()
    sass = _cuobjdump("-sass", "-arch", "sm_90", str(so))
    kernels = {}
    for body in sass.split("Function : ")[1:]:
        match = re.match(r"\S*sgdw_multi_tensor_kernelIffLb([01])ELb([01])E", body)
        if match:
            kernels[(match[1] == "1", match[2] == "1")] = body
    assert len(kernels) == 4, f"fp32 kernels found: {sorted(kernels)}"
    for (has_momentum, aligned), body in kernels.items():
        vector = "LDG.E.128" in body and "STG.E.128" in body
        assert vector == aligned, f"momentum={has_momentum} aligned={aligned}: 16-byte accesses {vector}"


# ---- members: each tensor's dim 0 split into K blocks, each with its own row of hyper-parameters ----

MEMBERS = 3
# Members of 5 elements (not a whole number of 4-element vectors: the launch takes the scalar path), of 8
# (vectors), of 13 (two 12-element chunks), and an empty tensor.
MEMBER_SHAPES = [(15,), (6, 4), (3, 13), (0, 2)]
MEMBER_ROWS = [  # lr, momentum, dampening, weight_decay: momentum 0, dampening and weight decay 0 among them
    [0.1, 0.9, 0.0, 0.0],
    [0.05, 0.0, 0.1, 1e-2],
    [0.2, 0.5, 0.3, 5e-4],
]


def _emulate_members_and_separately(emulate, shapes, dtype, limits, steps=3, **flags):
    """Runs `steps` steps of the member launch and of one launch per member (its slices, its floats); returns
    (member-launch tensors, per-member tensors, the member launch's plans). Member 1's buffer holds NaN:
    with momentum 0 its update must not read it."""
    flags = {**dict(nesterov=False, maximize=False, decoupled_weight_decay=False), **flags}
    gen = torch.Generator().manual_seed(0)
    opmath = momentum_dtype(dtype)
    params = [_tensor(s, dtype, gen) for s in shapes]
    bufs = [torch.zeros(s, dtype=opmath) for s in shapes]
    for b in bufs:
        b.unflatten(0, (MEMBERS, -1))[1] = math.nan
    table = torch.tensor(MEMBER_ROWS, dtype=torch.float64)

    def member(t, k):
        return t.unflatten(0, (MEMBERS, -1))[k]

    separate = [
        ([member(p, k).clone() for p in params], [member(b, k).clone() for b in bufs] if MEMBER_ROWS[k][1] else [])
        for k in range(MEMBERS)
    ]
    plans = []
    for step in range(steps):
        grads = [_tensor(s, dtype, gen) for s in shapes]
        plan = emulate(params, grads, bufs, math.nan, None, None, None, math.nan, math.nan, math.nan,
                       first_step=step == 0, sm_count=2, limits=limits, member_table=table, **flags)  # fmt: skip
        plans.append([plan[i : i + 4] for i in range(0, len(plan), 4)])
        for k, (ps, bs) in enumerate(separate):
            lr, momentum, dampening, weight_decay = MEMBER_ROWS[k]
            emulate(ps, [member(g, k).clone() for g in grads], bs, lr, None, None, None, momentum, dampening,
                    weight_decay, first_step=step == 0, sm_count=2, limits=limits, **flags)  # fmt: skip
    return (params, bufs), separate, plans


def _assert_members_bit_identical(stacked, separate):
    params, bufs = stacked
    for k, (ps, bs) in enumerate(separate):
        for i, p in enumerate(params):
            got = p.unflatten(0, (MEMBERS, -1))[k]
            assert torch.equal(got.view(-1).view(torch.uint8), ps[i].view(-1).view(torch.uint8)), (
                f"member {k}, param {i}"
            )
            buf = bufs[i].unflatten(0, (MEMBERS, -1))[k]
            if bs:
                assert torch.equal(buf, bs[i]), f"member {k}, buffer {i}"
            else:  # momentum 0: the buffer was neither read nor written
                assert buf.isnan().all(), f"member {k}, buffer {i}"


@pytest.mark.parametrize("flags", [{}, dict(maximize=True), dict(decoupled_weight_decay=True)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_members_are_separate_launches_bit_for_bit(emulate, dtype, flags):
    stacked, separate, plans = _emulate_members_and_separately(emulate, MEMBER_SHAPES, dtype, SMALL_LIMITS, **flags)
    _assert_members_bit_identical(stacked, separate)
    # Chunks are cut at member boundaries: 3 x (1 + 1 + 2) chunks of at most 12; members of 5 elements are
    # not whole vectors, so the one launch takes the scalar path.
    assert plans == [[[3, 12, 0, 12]]] * 3


def test_members_of_whole_vectors_take_the_vector_path(emulate):
    stacked, separate, plans = _emulate_members_and_separately(emulate, [(6, 4), (3, 16)], torch.float32, SMALL_LIMITS)
    _assert_members_bit_identical(stacked, separate)
    assert plans[0] == [[2, 3 * 1 + 3 * 2, 1, 12]]


def test_members_continue_in_the_next_launch_mid_member(emulate):
    # At most 4 chunks per launch: the second tensor's 6 chunks (3 members x 2) go 1 + 4 + 1 into three launches,
    # the second and third starting inside a member.
    stacked, separate, plans = _emulate_members_and_separately(emulate, [(15,), (3, 13)], torch.float32, [4, 12, 2, 4])
    _assert_members_bit_identical(stacked, separate)
    assert plans[0] == [[2, 4, 0, 12], [1, 4, 0, 12], [1, 1, 0, 12]]
