"""Training images/s of a 4-member array (FusedResNet18: one forward + backward + one FusedSGDW step over all
members' parameters) against the same 4 ResNet18s trained one after another (4 x forward + backward + step),
at the smoke scale (configs/smoke.yaml: model width and batch size), in one run:

    pytest benchmarks/test_bench_arrays.py --benchmark-only

Both start from the same weights: 4 separately seeded ResNet18s, loaded into the array's members. The
first step is checked before timing: each member's logits, loss and weight update against its separate
model's (fp32 on a CPU; bf16 autocast on a GPU, with a looser tolerance). One timed call is one training step
of all 4 models, device-synchronised. extra_info carries the aggregate images/s (4 x batch per step), the
array's ratio over the separate models (when both ran in the same session), and the load average around
each measurement: a CPU figure from a shared machine means little without it.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, synchronize

from fasttrick import FusedSGDW
from fasttrick.config.yamlio import load_yaml
from fasttrick.models import FusedResNet18, ResNet18, member_cross_entropy

MEMBERS = 4
_SMOKE = load_yaml((Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml").read_text())["base"]
WIDTH = _SMOKE["model"]["width"]
BATCH = _SMOKE["data"]["batch_size"]
AMP_DTYPE = torch.bfloat16 if DEVICE == "cuda" else None  # what a run's precision "auto" picks on each device
HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
ROUNDS, WARMUP_ROUNDS = (30, 5) if DEVICE == "cuda" else (5, 1)
# First-step agreement, relative (norm of the difference / norm of the separate model's): fp32 differs only
# by summation order (~1e-6 seen); bf16 autocast rounds every conv input, and fused and separate kernels
# round differently.
FIRST_STEP_RTOL = 5e-2 if AMP_DTYPE is not None else 1e-4
IMPLEMENTATIONS = ("separate-4", "fused-4")
_median_seconds: dict[str, float] = {}


@dataclass
class Models:
    separate: list[ResNet18]
    fused: FusedResNet18
    separate_optimizers: list[FusedSGDW]
    fused_optimizer: FusedSGDW
    images: torch.Tensor
    labels: torch.Tensor


def _autocast():
    return torch.autocast(DEVICE, dtype=AMP_DTYPE, enabled=AMP_DTYPE is not None)


@functools.cache
def _models() -> Models:
    separate = []
    for k in range(MEMBERS):
        torch.manual_seed(k)
        separate.append(ResNet18(width=WIDTH).to(DEVICE, memory_format=torch.channels_last))
    fused = FusedResNet18(members=MEMBERS, width=WIDTH).to(DEVICE, memory_format=torch.channels_last)
    for k, model in enumerate(separate):
        fused.load_member(k, model.state_dict())
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 32, 32, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,), generator=gen).to(DEVICE)
    return Models(
        separate,
        fused,
        [FusedSGDW(m.parameters(), **HYPER) for m in separate],
        FusedSGDW(fused.parameters(), **HYPER),
        images,
        labels,
    )


def _separate_step(models: Models) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    logits, losses = [], []
    for model, optimizer in zip(models.separate, models.separate_optimizers, strict=True):
        with _autocast():
            out = model(models.images)
        loss = F.cross_entropy(out.float(), models.labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logits.append(out.detach())
        losses.append(loss.detach())
    synchronize()
    return logits, losses


def _fused_step(models: Models) -> tuple[torch.Tensor, torch.Tensor]:
    with _autocast():
        out = models.fused(models.images)
    losses = member_cross_entropy(out.float(), models.labels)
    losses.sum().backward()
    models.fused_optimizer.step()
    models.fused_optimizer.zero_grad(set_to_none=True)
    synchronize()
    return out.detach(), losses.detach()


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()


@functools.cache
def _first_step_numerics() -> str:
    """One step of both from the same weights; returns the worst relative errors after checking them."""
    models = _models()
    before = [[p.detach().clone() for p in m.parameters()] for m in models.separate]
    separate_logits, separate_losses = _separate_step(models)
    fused_logits, fused_losses = _fused_step(models)
    worst = {"logits": 0.0, "loss": 0.0, "update": 0.0}
    for k in range(MEMBERS):
        errors = {
            "logits": _relative_error(fused_logits[:, k], separate_logits[k]),
            "loss": _relative_error(fused_losses[k], separate_losses[k]),
        }
        fused_update = torch.cat(
            [(v - b).flatten() for v, b in zip(models.fused.member_views(k), before[k], strict=True)]
        )
        separate_update = torch.cat(
            [(p.detach() - b).flatten() for p, b in zip(models.separate[k].parameters(), before[k], strict=True)]
        )
        errors["update"] = _relative_error(fused_update, separate_update)
        for what, error in errors.items():
            assert error <= FIRST_STEP_RTOL, f"first step, member {k}: {what} differs by {error:.2e} (relative)"
            worst[what] = max(worst[what], error)
    return ", ".join(f"{what} {error:.1e}" for what, error in worst.items())


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_array_training_step(benchmark, impl):
    start = time.perf_counter()
    numerics = _first_step_numerics()
    models = _models()
    step: Callable[[], object] = functools.partial(_fused_step if impl == "fused-4" else _separate_step, models)
    first_calls_seconds = time.perf_counter() - start

    benchmark.group = f"array-resnet18-{DEVICE}"
    load_before = _loadavg()
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    median = benchmark.stats.stats.median
    _median_seconds[impl] = median
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        impl=impl,
        members=MEMBERS,
        width=WIDTH,
        batch_size=BATCH,
        precision=str(AMP_DTYPE or torch.float32).removeprefix("torch."),
        threads=torch.get_num_threads(),
        images_per_s=round(MEMBERS * BATCH / median),
        first_step_relative_errors=numerics,
        first_calls_seconds=round(first_calls_seconds, 2),
        loadavg_before=load_before,
        loadavg_after=_loadavg(),
    )
    if impl == "fused-4" and "separate-4" in _median_seconds:
        ratio = _median_seconds["separate-4"] / median
        benchmark.extra_info["speedup_vs_separate"] = round(ratio, 2)
        print(f"\nfused array of {MEMBERS}: {ratio:.2f}x the images/s of {MEMBERS} separate models ({DEVICE})")


# The 3x3 convolutions of each stage at the smoke scale (channels = base * multiple, map side 32 / stride),
# which hold most of a training step's time: an array's only gain in compute is that its grouped
# convolution of K members beats K dense convolutions of one member each.
STAGE_CONVOLUTIONS = [(round(64 * WIDTH) * multiple, 32 // multiple) for multiple in (1, 2, 4, 8)]
_conv_median_seconds: dict[tuple[int, str], float] = {}


def _conv_step(impl: str, images: torch.Tensor, weights: torch.Tensor) -> None:
    """Forward + backward of one 3x3 convolution for all members: grouped (the array's kernel) or one dense
    convolution per member (what separate runs launch)."""
    if impl == "grouped":
        out = F.conv2d(images, weights, padding=1, groups=MEMBERS)
        out.backward(torch.ones_like(out))
    else:
        for x, w in zip(images.chunk(MEMBERS, dim=1), weights.chunk(MEMBERS, dim=0), strict=True):
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            out = F.conv2d(x, w.detach().requires_grad_(), padding=1)
            out.backward(torch.ones_like(out))
    synchronize()


@pytest.mark.parametrize("impl", ("dense-4", "grouped"))
@pytest.mark.parametrize(("channels", "side"), STAGE_CONVOLUTIONS)
def test_member_convolution(benchmark, channels, side, impl):
    """One stage's 3x3 convolution, forward + backward, for 4 members: grouped against 4 dense launches.
    The per-member input copy of dense-4 stands for the separate runs' own activations and is timed with
    it (about one activation's read and write, small beside the convolution)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, MEMBERS * channels, side, side, generator=gen).to(DEVICE)
    images = images.contiguous(memory_format=torch.channels_last).requires_grad_()
    weights = torch.randn(MEMBERS * channels, channels, 3, 3, generator=gen).to(DEVICE)
    weights = weights.contiguous(memory_format=torch.channels_last).requires_grad_()
    benchmark.group = f"array-conv-{DEVICE}-{channels}ch-{side}px"
    benchmark.pedantic(_conv_step, args=(impl, images, weights), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    median = benchmark.stats.stats.median
    _conv_median_seconds[(channels, impl)] = median
    benchmark.extra_info.update(
        impl=impl, members=MEMBERS, channels=channels, side=side, batch_size=BATCH, threads=torch.get_num_threads()
    )
    if impl == "grouped" and (channels, "dense-4") in _conv_median_seconds:
        ratio = median / _conv_median_seconds[(channels, "dense-4")]
        benchmark.extra_info["grouped_time_vs_dense"] = round(ratio, 2)
        print(
            f"\n{channels} channels at {side}x{side}: grouped takes {ratio:.2f}x the time of {MEMBERS} dense ({DEVICE})"
        )
