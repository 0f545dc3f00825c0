"""One optimizer step: FusedSGDW backends against torch.optim.SGD's for-loop, foreach and fused paths,
and torch.compile of torch's step with a tensor lr, on ResNet-18's parameter set (11.17 M params, 62 tensors)
and a large flat set, all in one run. And one step of 25 ResNet-18s stacked as members of one FusedSGDW
(per-member lr, momentum, weight decay) against 25 separate FusedSGDW steps.

    pytest benchmarks/test_bench_optim.py --benchmark-only

GB/s counts the 20 bytes an fp32 parameter must move in a step (read p, g, b; write p, b), so it is
useful bandwidth: an implementation that makes more passes over memory shows fewer GB/s. Before
timing, every implementation runs three steps from the same start and must match torch's for-loop SGD
(the numerics are checked in the same run as the speed). Each timed call is one step plus a device sync.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import DEVICE, synchronize

from fasttrick import FusedSGDW, available_backends
from fasttrick.models import resnet18
from fasttrick.ops import resolve_backend

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
BYTES_PER_PARAM = 20
# 64 M fp32 params (1.28 GB a step) is the size the bandwidth target is set at on the GPU; on a CPU
# 16 M keeps the for-loop baseline to seconds.
FLAT_NUMEL = 64 * 2**20 if DEVICE == "cuda" else 16 * 2**20
ROUNDS = 50 if DEVICE == "cuda" else 20


class _CompiledTorchSGD:
    """What a user tries before installing fasttrick: torch's SGD with a tensor lr (so a scheduler changing it
    does not recompile) and its step under torch.compile, as torch's "compiling the optimizer" recipe does."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        hyper = dict(HYPER, lr=torch.tensor(HYPER["lr"], device=params[0].device))
        self.optimizer = torch.optim.SGD(params, foreach=True, **hyper)
        self.step = torch.compile(self.optimizer.step)


IMPLEMENTATIONS = {
    "torch-forloop": lambda ps: torch.optim.SGD(ps, foreach=False, **HYPER),
    "torch-foreach": lambda ps: torch.optim.SGD(ps, foreach=True, **HYPER),
    "torch-fused": lambda ps: torch.optim.SGD(ps, fused=True, **HYPER),
    "torch-compiled": _CompiledTorchSGD,
}
for _backend in available_backends(DEVICE):
    if _backend != "reference":  # the oracle is torch's for-loop, already timed above
        IMPLEMENTATIONS[f"fasttrick-{_backend}"] = functools.partial(FusedSGDW, backend=_backend, **HYPER)


def _resnet18_shapes() -> list[tuple[torch.Size, bool]]:
    model = resnet18().to(memory_format=torch.channels_last)  # as the trainer lays it out
    return [(p.shape, p.dim() == 4) for p in model.parameters()]


PARAM_SETS = {
    "resnet18": _resnet18_shapes,
    "flat": lambda: [(torch.Size([FLAT_NUMEL]), False)],
}


@functools.cache
def _start(param_set: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    params, grads = [], []
    for shape, channels_last in PARAM_SETS[param_set]():
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        params.append(torch.randn(shape, generator=gen).to(DEVICE).contiguous(memory_format=fmt))
        grads.append((torch.randn(shape, generator=gen) * 1e-2).to(DEVICE).contiguous(memory_format=fmt))
    return params, grads


def _fresh(param_set: str) -> list[torch.Tensor]:
    params, grads = _start(param_set)
    fresh = [p.clone().requires_grad_() for p in params]
    for p, g in zip(fresh, grads, strict=True):
        p.grad = g.clone()
    return fresh


@functools.cache
def _expected_after_three_steps(param_set: str) -> list[torch.Tensor]:
    params = _fresh(param_set)
    opt = IMPLEMENTATIONS["torch-forloop"](params)
    for _ in range(3):
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("param_set", PARAM_SETS)
def test_optimizer_step(benchmark, copy_gbps, param_set, impl):
    params = _fresh(param_set)
    opt = IMPLEMENTATIONS[impl](params)
    for _ in range(3):
        opt.step()
    for p, e in zip(params, _expected_after_three_steps(param_set), strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1.3e-6, atol=1e-5)

    def step() -> None:
        opt.step()
        synchronize()

    benchmark.group = f"sgd-step-{param_set}-{DEVICE}"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=3, iterations=1)
    numel = sum(p.numel() for p in params)
    median = benchmark.stats.stats.median
    gbps = BYTES_PER_PARAM * numel / median / 1e9
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        param_set=param_set,
        impl=impl,
        params=numel,
        tensors=len(params),
        GBps=round(gbps, 1),
        copy_GBps=round(copy_gbps, 1),
        fraction_of_copy=round(gbps / copy_gbps, 3),
        numerics="matches torch.optim.SGD for-loop after 3 steps (rtol 1.3e-6, atol 1e-5)",
    )


def test_copy_bandwidth(benchmark, copy_gbps):
    """The ceiling: a device-to-device copy of 256 M (GPU) / 64 M (CPU) fp32 values."""
    numel = (256 if DEVICE == "cuda" else 64) * 2**20
    src = torch.randn(numel, device=DEVICE)
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)
        synchronize()

    benchmark.group = f"copy-{DEVICE}"
    benchmark.pedantic(copy, rounds=10, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(GBps=round(2 * src.nbytes / benchmark.stats.stats.median / 1e9, 1))


# ---- members: 25 models in one step ------------------------------------------------------------------------

MEMBERS = 25
# ResNet-18 itself on the GPU (25 x 11.17 M params); on a CPU width 1/8 (25 x 0.18 M), so the 25 separate
# steps take milliseconds, not seconds.
MEMBER_WIDTH = 1.0 if DEVICE == "cuda" else 0.125
# Per-member values as a sweep has them: lr spread over 10x, two members without momentum, two without decay.
MEMBER_HYPER = dict(
    lr=[0.01 * 1.1**k for k in range(MEMBERS)],
    momentum=[0.0 if k in (3, 17) else 0.9 for k in range(MEMBERS)],
    weight_decay=[0.0 if k in (5, 11) else 5e-4 for k in range(MEMBERS)],
)


@functools.cache
def _member_start() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The 25 members' parameters and grads, stacked along dim 0 (channels-last convolutions, as trained)."""
    gen = torch.Generator().manual_seed(0)
    params, grads = [], []
    for p in resnet18(width=MEMBER_WIDTH).parameters():
        shape = (MEMBERS * p.shape[0], *p.shape[1:])
        fmt = torch.channels_last if p.dim() == 4 else torch.contiguous_format
        params.append(torch.randn(shape, generator=gen).to(DEVICE).contiguous(memory_format=fmt))
        grads.append((torch.randn(shape, generator=gen) * 1e-2).to(DEVICE).contiguous(memory_format=fmt))
    return params, grads


def _member(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.detach().unflatten(0, (MEMBERS, -1))[k]


class _SeparateSteps:
    """25 runs side by side: each member's own tensors (copies of its slices) and its own FusedSGDW."""

    def __init__(self, stacked: list[torch.Tensor]) -> None:
        self.params = []
        self.optimizers = []
        for k in range(MEMBERS):
            params = [_member(p, k).clone().requires_grad_() for p in stacked]
            for p, q in zip(params, stacked, strict=True):
                p.grad = _member(q.grad, k).clone()
            hyper = {key: values[k] for key, values in MEMBER_HYPER.items()}
            self.params.append(params)
            self.optimizers.append(FusedSGDW(params, **hyper))

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


def _stacked_members() -> list[torch.Tensor]:
    params, grads = _member_start()
    stacked = [p.clone().requires_grad_() for p in params]
    for p, g in zip(stacked, grads, strict=True):
        p.grad = g.clone()
    return stacked


@pytest.mark.parametrize("impl", ["members", "separate"])
def test_members_step(benchmark, impl):
    """One FusedSGDW step of 25 members against 25 separate steps; before timing, three steps of each from
    the same start must agree (bit for bit on the cpu, cuda and triton backends, reported)."""
    stacked = _stacked_members()
    members = FusedSGDW(stacked, members=MEMBERS, **MEMBER_HYPER)
    separate = _SeparateSteps(stacked)
    for _ in range(3):
        members.step()
        separate.step()
    bit_identical = True
    for k in range(MEMBERS):
        for p, q in zip(stacked, separate.params[k], strict=True):
            torch.testing.assert_close(_member(p, k), q.detach(), rtol=1.3e-6, atol=1e-5)
            bit_identical = bit_identical and torch.equal(_member(p, k), q.detach())
    timed = members if impl == "members" else separate

    def step() -> None:
        timed.step()
        synchronize()

    benchmark.group = f"members-step-{DEVICE}"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=3, iterations=1)
    group = members.param_groups[0]
    backend = resolve_backend(group["backend"], stacked[0].device)[0]
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        impl=impl,
        backend=backend,
        members=MEMBERS,
        width=MEMBER_WIDTH,
        params=sum(p.numel() for p in stacked),
        tensors=len(stacked) if impl == "members" else len(stacked) * MEMBERS,
        numerics="members == 25 separate steps after 3 steps (rtol 1.3e-6, atol 1e-5)",
        bit_identical=bit_identical,
    )
