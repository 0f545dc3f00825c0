"""The fasttrick:: ops: registration, torch.compile, launch count, and what this machine must have built."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from fasttrick import FusedSGDW, available_backends

from sgdw_helpers import (
    DEVICE_BACKENDS,
    FP32_TOL,
    assert_params_close,
    grad_stream,
    make_params,
    run_steps,
)

RESNET_LIKE = (
    [(64, 3, 3, 3)] + [(64, 64, 3, 3)] * 8 + [(64,)] * 20 + [(128, 64, 3, 3)] * 6 + [(128,)] * 25 + [(10,)] * 2
)


def test_backends_this_machine_must_have():
    """CI names what its install must provide, so a silently missing extension fails here instead of
    shrinking the test matrix (e.g. FASTTRICK_REQUIRE_BACKENDS=cpu,triton)."""
    required = [b for b in os.environ.get("FASTTRICK_REQUIRE_BACKENDS", "").split(",") if b]
    if not required:
        pytest.skip("FASTTRICK_REQUIRE_BACKENDS is not set")
    assert set(required) <= set(available_backends("cpu") + available_backends("cuda"))


def test_cuda_extension_was_built():
    """The CUDA kernel compiles wherever nvcc is (CI included); it can only run with a GPU."""
    if os.environ.get("FASTTRICK_REQUIRE_CUDA_EXT") != "1":
        pytest.skip("FASTTRICK_REQUIRE_CUDA_EXT is not set")
    importlib.import_module("fasttrick._C_cuda")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fasttrick::sgdw_", "CUDA")


def _op_args(device, momentum=0.9, first_step=False, found_inf=None):
    params = [t.detach() for t in make_params([(127,), (5, 7), ()], device=device)]
    grads = [torch.randn_like(p) for p in params]
    bufs = [torch.randn_like(p) for p in params] if momentum else []
    lr = torch.tensor(0.1, device=device)
    hyper = dict(lr=0.0, momentum=momentum, dampening=0.0, weight_decay=1e-4, nesterov=False, maximize=False)
    flags = dict(decoupled_weight_decay=False, first_step=first_step, lr_tensor=lr, found_inf=found_inf)
    return (params, grads, bufs), {**hyper, **flags}


# The C++ kernels (cpu, cuda) implement fasttrick::sgdw_, the Triton kernel fasttrick::sgdw_triton_.
_OP_OF_BACKEND = {"cpu": "sgdw_", "cuda": "sgdw_", "triton": "sgdw_triton_"}


@pytest.mark.parametrize(("device", "backend"), [(d, b) for d, b in DEVICE_BACKENDS if b in _OP_OF_BACKEND])
def test_opcheck(device, backend):
    """torch.library.opcheck: schema, fake implementation and mutation annotations agree."""
    from fasttrick.ops import resolve_backend

    resolve_backend(backend, device)  # loads the kernels
    op = getattr(torch.ops.fasttrick, _OP_OF_BACKEND[backend])
    torch.library.opcheck(op, *_op_args(device), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(op, *_op_args(device, momentum=0.0, first_step=True), test_utils=("test_schema",))
    # The compiled form: hyper-parameters in a float64 tensor, lr from the float (no lr_tensor).
    args, kwargs = _op_args(device)
    kwargs.update(lr_tensor=None, hyper=torch.tensor([0.1, 0.9, 0.0, 1e-4], dtype=torch.float64, device=device))
    torch.library.opcheck(op, args, kwargs, test_utils=("test_schema", "test_faketensor"))
    # Members: a [K, 4] table, every param's dim 0 split into K blocks (momentum 0 for one of them).
    members_args = tuple([torch.randn(6, 5, device=device), torch.randn(9, device=device)] for _ in range(3))
    kwargs["hyper"] = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.2, 0.0, 0.1, 1e-2], [0.3, 0.5, 0.0, 1e-4]],
                                   dtype=torch.float64, device=device)  # fmt: skip
    torch.library.opcheck(op, members_args, kwargs, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize(("device", "backend"), [(d, b) for d, b in DEVICE_BACKENDS if b in _OP_OF_BACKEND])
def test_op_refuses_params_it_cannot_split_into_members(device, backend):
    from fasttrick.ops import resolve_backend

    resolve_backend(backend, device)
    op = getattr(torch.ops.fasttrick, _OP_OF_BACKEND[backend])
    table = torch.zeros(3, 4, dtype=torch.float64, device=device)
    for param, why in (
        (torch.zeros(4, 6, device=device), "divisible"),
        (torch.zeros(4, 6, device=device).t(), "outermost"),
    ):
        with pytest.raises((RuntimeError, ValueError), match=why):
            op(
                [param], [torch.zeros_like(param)], [], lr=0.0, momentum=0.0, dampening=0.0, weight_decay=0.0,
                nesterov=False, maximize=False, decoupled_weight_decay=False, first_step=False, hyper=table,
            )  # fmt: skip


# Schedules that change the group's floats every step: OneCycleLR and CyclicLR cycle momentum too.
_SCHEDULES = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20),
    "CyclicLR": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=2),
}
# Every backend under the schedule that changes most; the others on the device's first backend.
_COMPILE_CASES = [(d, b, "OneCycleLR") for d, b in DEVICE_BACKENDS] + [
    (d, available_backends(d)[0], s) for d in sorted({d for d, _ in DEVICE_BACKENDS}) for s in ("StepLR", "CyclicLR")
]


def _compile_and_step(make_optimizer, schedule: str, device: str, steps: int = 5):
    """(graphs compiled, graph breaks, params) for `steps` compiled optimizer steps under `schedule`."""
    from torch._dynamo.utils import counters

    shapes = [(127,), (64, 32, 3, 3)]
    params = make_params(shapes, device=device)
    opt = make_optimizer(params)
    scheduler = _SCHEDULES[schedule](opt)
    graphs = 0

    def counting_backend(gm, example_inputs):
        nonlocal graphs
        graphs += 1
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)  # fake tensors -> register_fake

    torch._dynamo.reset()
    counters.clear()

    def train_step():
        opt.step()  # looked up per call: LR schedulers wrap opt.step

    # Not fullgraph: the schedulers' step wrapper (torch/optim/lr_scheduler.py) is skipped by Dynamo, a
    # graph break torch.optim.SGD has as well; what follows compiles as the step's own frame.
    compiled_step = torch.compile(train_step, backend=counting_backend)
    for step_grads in grad_stream(shapes, steps):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.to(device)
        compiled_step()
        scheduler.step()
    return graphs, sum(counters["graph_break"].values()), params


@pytest.mark.parametrize(("device", "backend", "schedule"), _COMPILE_CASES)
def test_compiled_step_compiles_no_more_than_torch_sgd(device, backend, schedule):
    """torch.compile of a step under LR schedulers that change lr (and momentum) every step: no more
    graphs and graph breaks than torch.optim.SGD has for the same steps (one graph for the first step,
    which creates state, one with the changing floats as graph inputs; a float op argument would
    recompile for every new momentum instead)."""
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    ours = _compile_and_step(lambda ps: FusedSGDW(ps, backend=backend, **hyper), schedule, device)
    # The foreach backend is compared with torch's foreach step: both pass floats as _foreach_* scalars,
    # which Dynamo specialises (each new momentum compiles anew, in torch.optim.SGD(foreach=True) too).
    foreach = backend == "foreach"
    theirs = _compile_and_step(lambda ps: torch.optim.SGD(ps, foreach=foreach, **hyper), schedule, "cpu")
    assert ours[:2] <= theirs[:2], f"(graphs, graph breaks): {ours[:2]} for FusedSGDW, {theirs[:2]} for SGD"
    assert foreach or ours[0] <= 2
    params, expected = ours[2], theirs[2]
    assert_params_close(params, expected, **FP32_TOL)


# foreach: its _foreach_* scalar momentum is specialised, as in torch's own foreach step (see above).
@pytest.mark.parametrize(("device", "backend"), [(d, b) for d, b in DEVICE_BACKENDS if b != "foreach"])
def test_compiled_step_with_a_tensor_lr_compiles_once_after_state(device, backend):
    """A tensor lr changed in place by the scheduler (OneCycleLR fill_s it) and a cycled momentum:
    two graphs in all, as for the float lr."""
    graphs, breaks, params = _compile_and_step(
        lambda ps: FusedSGDW(ps, backend=backend, lr=torch.tensor(0.1, device=device), momentum=0.9),
        "OneCycleLR",
        device,
    )
    assert graphs <= 2 and breaks <= 1  # the one break: the schedulers' step wrapper
    expected = make_params([(127,), (64, 32, 3, 3)])
    ref = torch.optim.SGD(expected, foreach=False, lr=torch.tensor(0.1), momentum=0.9)
    scheduler = _SCHEDULES["OneCycleLR"](ref)
    run_steps(ref, expected, grad_stream([(127,), (64, 32, 3, 3)], 5), after_step=lambda s: scheduler.step())
    assert_params_close(params, expected, **FP32_TOL)


@pytest.mark.parametrize("device", [d for d, b in DEVICE_BACKENDS if b == "triton"])
def test_triton_is_one_launch_per_group_and_reuses_its_tables(device, monkeypatch):
    from fasttrick.ops import triton_sgdw

    launches = []
    kernel = triton_sgdw._sgdw_kernel

    class CountingKernel:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(triton_sgdw, "_sgdw_kernel", CountingKernel())
    params = make_params(RESNET_LIKE, device=device)
    opt = FusedSGDW(params, lr=0.1, momentum=0.9, backend="triton")
    grads = grad_stream(RESNET_LIKE, 3)
    run_steps(opt, params, grads[:1])  # first step: buffers created
    tables_after_first_step = set(triton_sgdw._TABLE_CACHE)
    for step_grads in grads[1:]:  # .grad tensors kept, as with zero_grad(set_to_none=False)
        for p, g in zip(params, step_grads, strict=True):
            p.grad.copy_(g)
        opt.step()
    assert len(launches) == 3  # 65 tensors, one launch a step
    assert set(triton_sgdw._TABLE_CACHE) == tables_after_first_step  # no table rebuilt after the first step


_PTX_PROBE = """
import json, re, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fasttrick.ops.triton_sgdw import BLOCK, NUM_WARPS, _sgdw_kernel

runtime_args = {"pointer_table": "*i64", "member_numel_table": "*i64", "program_tensor": "*i32",
                "program_start": "*i64", "program_member": "*i32", "n_tensors": "i32", "lr_bits": "i64", "momentum_bits": "i64", "one_minus_dampening_bits": "i64",
                "weight_decay_bits": "i64", "lr_ptr": "*fp32", "hyper_ptr": "*fp64", "grad_scale_ptr": "*fp32",
                "found_inf_ptr": "*fp32"}
kinds = {}
for aligned in (True, False):
    constexprs = dict(PARAM=tl.float32, OPMATH=tl.float32, HAS_GRAD_SCALE=False, HAS_FOUND_INF=True,
                      HAS_MOMENTUM=True, HAS_WEIGHT_DECAY=True, NESTEROV=False, MAXIMIZE=False, DECOUPLED=False,
                      FIRST_STEP=False, LR_FROM_PTR=False, HYPER_FROM_PTR=False, HAS_MEMBERS=False, ALIGNED=aligned,
                      BLOCK=BLOCK)
    signature = {**runtime_args, **{name: "constexpr" for name in constexprs}}
    names = list(signature)
    source = ASTSource(fn=_sgdw_kernel, signature=signature,
                       constexprs={(names.index(n),): v for n, v in constexprs.items()})
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS}).asm["ptx"]
    kinds[str(aligned)] = sorted(set(re.findall(r"(?:ld|st)\\.global[.\\w]*", ptx)))
print(json.dumps(kinds))
"""


def test_triton_kernel_compiles_for_h100_with_vector_access():
    """Compiles the Triton kernel for sm_90 (no GPU needed) and reads its PTX: aligned launches must move
    parameters with 16-byte vector loads and stores, unaligned ones fall back to scalar accesses."""
    import json
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter cannot compile
    out = subprocess.run([sys.executable, "-c", _PTX_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    kinds = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ld.global.v4.b32" in kinds["True"] and "st.global.v4.b32" in kinds["True"]
    assert "ld.global.v4.b32" not in kinds["False"]


_JIT_PROBE = """
import torch
from fasttrick import FusedSGDW, _backend
probe = _backend.extension_probe("cpu")
assert probe.available and "JIT" in probe.detail, probe.detail
params = [torch.randn(1000, requires_grad=True) for _ in range(2)]
expected = [p.detach().clone().requires_grad_() for p in params]
for ps, backend in ((params, "cpu"), (expected, "reference")):
    opt = FusedSGDW(ps, lr=0.1, momentum=0.9, weight_decay=5e-4, backend=backend)
    for step in range(3):
        for i, p in enumerate(ps):
            p.grad = torch.full_like(p, 0.1 * (step + i + 1))
        opt.step()
for p, e in zip(params, expected):
    torch.testing.assert_close(p, e, rtol=1.3e-6, atol=1e-5)
print("jit ok")
"""


@pytest.mark.slow
def test_missing_cpu_extension_is_jit_built_with_ninja(tmp_path):
    """Without the prebuilt module, the first use JIT-builds csrc/ with ninja (about a minute here)."""
    import subprocess
    import sys

    env = {**os.environ, "FASTTRICK_PREBUILT": "0", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _JIT_PROBE], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "jit ok" in out.stdout


_ISA_PROBE = """
import torch
from fasttrick import FusedSGDW
shapes = [(1,), (127,), (4099,), (64, 32, 3, 3)]
for dtype in (torch.float32, torch.float64, torch.bfloat16):
    params = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    expected = [p.detach().clone().requires_grad_() for p in params]
    for ps, backend in ((params, "cpu"), (expected, "reference")):
        opt = FusedSGDW(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=5e-4, backend=backend)
        torch.manual_seed(0)
        for _ in range(5):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=1.3e-6, atol=1e-5)
print("isa ok")
"""


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return flag in f.read().split()
    except OSError:
        return False


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_cpu_kernel_matches_reference_at_every_simd_width(isa):
    """The C++ kernel picks its SIMD width from the CPU; FASTTRICK_CPU_ISA forces each one this CPU has."""
    import subprocess
    import sys

    if isa != "baseline" and not _cpu_has({"avx2": "avx2", "avx512": "avx512f"}[isa]):
        pytest.skip(f"this CPU has no {isa}")
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the C++ CPU kernel is not available here")
    env = {**os.environ, "FASTTRICK_CPU_ISA": isa}
    out = subprocess.run([sys.executable, "-c", _ISA_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "isa ok" in out.stdout


def test_compiled_grad_scaler_step_compiles_no_more_than_torch_sgd():
    """scaler.step(opt) compiled: as many graphs as torch.optim.SGD; one graph break more, on the first
    step only: the host read of found_inf that keeps a skipped first step from leaving buffers behind
    (torch.optim.SGD's GradScaler path reads it on every step, in a function Dynamo skips)."""
    from torch._dynamo.utils import counters

    def compile_and_step(make_optimizer):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        opt = make_optimizer(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=128.0)

        def train_step():
            scaler.step(opt)
            scaler.update()

        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(train_step, backend="aot_eager")
        for _ in range(4):
            opt.zero_grad()
            scaler.scale(model(torch.randn(3, 8)).sum()).backward()
            compiled()
        return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), list(model.parameters())

    hyper = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    ours = compile_and_step(lambda ps: FusedSGDW(ps, **hyper))
    theirs = compile_and_step(lambda ps: torch.optim.SGD(ps, foreach=False, **hyper))
    assert ours[0] <= theirs[0] and ours[1] <= theirs[1] + 1, f"(graphs, breaks): ours {ours[:2]}, SGD {theirs[:2]}"
    assert_params_close(ours[2], theirs[2], **FP32_TOL)


@pytest.mark.parametrize("device", [d for d, b in DEVICE_BACKENDS if b == "triton"])
def test_triton_launcher_caches_nothing_per_hyperparameter_value(device):
    """OneCycleLR moves lr and momentum every step; the launcher's module-level caches stay as they
    were after the first steps (they once kept one device tensor per momentum value, without bound)."""
    from fasttrick.ops import triton_sgdw

    def cache_sizes():
        return {k: len(v) for k, v in vars(triton_sgdw).items() if isinstance(v, dict)}

    params = make_params([(300,), (7, 5)], device=device)
    opt = FusedSGDW(params, lr=0.1, momentum=0.9, backend="triton")
    scheduler = _SCHEDULES["OneCycleLR"](opt)
    grads = grad_stream([(300,), (7, 5)], 12)
    for p, g in zip(params, grads[0], strict=True):
        p.grad = g.to(device)
    momenta = set()
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad.copy_(g)
        opt.step()
        scheduler.step()
        momenta.add(opt.param_groups[0]["momentum"])
        if len(momenta) == 2:
            sizes = cache_sizes()
    assert len(momenta) >= 10 and cache_sizes() == sizes
