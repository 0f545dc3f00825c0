"""One training step (forward + backward + optimizer step) of CIFAR ResNet-18 in several variants, in one run:

    pytest benchmarks/test_bench_train.py --benchmark-only

- torch-baseline: what a plain PyTorch script does. fp32 (cuDNN's default TF32 convolutions on
  Ampere+ left on, as such a script would), NCHW, eager, torch.optim.SGD's for-loop (foreach=False),
  batches from a torchvision-transform DataLoader (RandomCrop(32, padding=4), RandomHorizontalFlip,
  ToTensor, Normalize on PIL images in worker processes) over a synthetic in-memory 50 000-image
  CIFAR-shaped set; the timed call includes fetching the batch and copying it to the device.
- fasttrick variants (VARIANTS): channels-last, FusedSGDW, a fixed batch already on the device (the loaders
  are timed by test_bench_loaders.py), across eager / torch.compile (default, max-autotune, reduce-overhead's
  CUDA graphs) / the whole step (forward, backward, optimizer) captured by hand in one CUDA graph, bf16
  autocast vs fp32, batch 512 vs 1024. On a CPU only eager fp32 at batch 32 runs (a step takes ~0.7 s); the
  compiled one there needs FASTTRICK_BENCH_COMPILE=1 (the compile alone took 55-61 s on the 2-core machine).

Numerics, checked in the same run before timing: each variant trains NUMERICS_STEPS steps from the same
initial weights on the same batch; the loss must change from step to step (a graph replay that updates
nothing repeats it) and the last one must be within LOSS_RTOL of eager's at the same precision and batch
(with lr 0.1 and momentum 0.9 the loss moves by tenths between steps: a wrong step misses by far more). extra_info carries images/s and the speed-up over the
baseline when the baseline ran in the same session. Each timed call is one step plus a device sync.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, synchronize
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fasttrick import FusedSGDW
from fasttrick.models import resnet18

BATCH = 512 if DEVICE == "cuda" else 32  # the baseline's batch
ROUNDS, WARMUP_ROUNDS = (30, 5) if DEVICE == "cuda" else (5, 1)
HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
NUMERICS_STEPS = 10 if DEVICE == "cuda" else 3
# bf16 autocast: compiled kernels fuse and round differently from eager; after 10 steps the losses of two
# correct bf16 steps differed by up to ~1e-2 relative (estimate; to be confirmed by the first GPU run).
LOSS_RTOL = 3e-2
NUM_WORKERS = max(1, min(12, (os.cpu_count() or 4) - 2)) if DEVICE == "cuda" else 1
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
COMPILE_ON_CPU = os.environ.get("FASTTRICK_BENCH_COMPILE") == "1"


@dataclass(frozen=True)
class Variant:
    compile_mode: str | None  # torch.compile(model, mode=...); None: eager
    whole_step_graph: bool  # forward + backward + FusedSGDW step captured by hand in one CUDA graph
    amp_dtype: torch.dtype | None  # autocast dtype; None: fp32
    batch: int


if DEVICE == "cuda":
    VARIANTS = {
        "fasttrick-eager-fp32-b512": Variant(None, False, None, 512),
        "fasttrick-eager-bf16-b512": Variant(None, False, torch.bfloat16, 512),
        "fasttrick-graphed-bf16-b512": Variant(None, True, torch.bfloat16, 512),
        "fasttrick-compiled-bf16-b512": Variant("default", False, torch.bfloat16, 512),
        "fasttrick-reduce-overhead-bf16-b512": Variant("reduce-overhead", False, torch.bfloat16, 512),
        "fasttrick-compiled-bf16-b1024": Variant("default", False, torch.bfloat16, 1024),
        # Last: its autotuning compile is the longest (minutes), and gpu_check.sh's timeout may cut it.
        "fasttrick-max-autotune-bf16-b512": Variant("max-autotune", False, torch.bfloat16, 512),
    }
else:
    VARIANTS = {
        "fasttrick-eager-fp32-b32": Variant(None, False, None, 32),
        "fasttrick-compiled-fp32-b32": Variant("default", False, None, 32),
    }
IMPLEMENTATIONS = ("torch-baseline", *VARIANTS)
_median_seconds: dict[str, float] = {}  # per implementation, for the speed-ups over the baseline


class SyntheticCifar(Dataset):
    """50 000 random 32x32 RGB uint8 images held in memory and served as PIL images, as torchvision's
    CIFAR10 serves them: the transforms' cost does not depend on pixel values, and nothing downloads."""

    def __init__(self, transform: Callable) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(50_000, 32, 32, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 10, size=50_000)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def _forever(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def _baseline_step() -> tuple[Callable[[], torch.Tensor], list[float]]:
    """The step, and the list it appends each call's wait for its batch to (seconds)."""
    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    loader = DataLoader(
        SyntheticCifar(augment),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=NUM_WORKERS,
        pin_memory=DEVICE == "cuda",
        persistent_workers=True,
    )
    batches = _forever(loader)
    model = resnet18().to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), foreach=False, **HYPER)

    data_waits: list[float] = []

    def step() -> torch.Tensor:
        start = time.perf_counter()
        images, labels = next(batches)
        data_waits.append(time.perf_counter() - start)
        images, labels = images.to(DEVICE, non_blocking=True), labels.to(DEVICE, non_blocking=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        return loss

    return step, data_waits


def _fasttrick_step(variant: Variant) -> Callable[[], torch.Tensor]:
    """One training step of `variant`, from the seed-0 initial weights, on a fixed batch."""
    torch.manual_seed(0)
    model = resnet18().to(DEVICE, memory_format=torch.channels_last)
    optimizer = FusedSGDW(model.parameters(), **HYPER)
    forward = torch.compile(model, mode=variant.compile_mode) if variant.compile_mode else model
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(variant.batch, 3, 32, 32, generator=gen).to(DEVICE)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (variant.batch,), generator=gen).to(DEVICE)

    def loss_step() -> torch.Tensor:
        # cache_enabled=False: autocast's weight-cast cache would hold tensors from outside a graph capture.
        with torch.autocast(
            DEVICE, dtype=variant.amp_dtype, enabled=variant.amp_dtype is not None, cache_enabled=False
        ):
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    if not variant.whole_step_graph:

        def step() -> torch.Tensor:
            loss = loss_step()
            optimizer.zero_grad(set_to_none=True)
            synchronize()
            return loss

        return step

    # torch's whole-network capture recipe: warm up on a side stream (the momentum buffers and the backend's
    # one-time probe happen there, outside the graph), then capture one step; gradients stay allocated
    # (zero_grad(set_to_none=False) inside the graph would reset them, backward overwrites them instead).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            loss_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = loss_step()

    def replay() -> torch.Tensor:
        graph.replay()
        synchronize()
        return static_loss.clone()

    return replay


@functools.cache
def _last_eager_loss(amp_dtype: torch.dtype | None, batch: int) -> float:
    step = _fasttrick_step(Variant(None, False, amp_dtype, batch))
    for _ in range(NUMERICS_STEPS - 1):
        step()
    return step().item()


def _check_numerics(impl: str, variant: Variant, step: Callable[[], torch.Tensor]) -> float:
    """Runs NUMERICS_STEPS steps of a fresh `variant` (step is fresh); returns its last loss after checking it.
    The graphed variant's warm-up steps count: they train the same weights."""
    done = 3 if variant.whole_step_graph else 0
    losses = [step().item() for _ in range(NUMERICS_STEPS - done)]
    last = losses[-1]
    assert math.isfinite(last), f"{impl}: loss {last} after {NUMERICS_STEPS} steps"
    assert losses[-1] != losses[-2], f"{impl}: the last two steps left the loss unchanged: {losses}"
    reference = _last_eager_loss(variant.amp_dtype, variant.batch)
    assert abs(last - reference) <= LOSS_RTOL * abs(reference), (
        f"{impl}: loss {last:.4f} after {NUMERICS_STEPS} steps, eager {reference:.4f} (rtol {LOSS_RTOL})"
    )
    return last


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_train_step(benchmark, impl):
    variant = VARIANTS.get(impl)
    if variant and variant.compile_mode and DEVICE == "cpu" and not COMPILE_ON_CPU:
        pytest.skip("compiling ResNet-18 fwd+bwd takes ~60 s on a 2-core CPU; FASTTRICK_BENCH_COMPILE=1 runs it")
    torch.manual_seed(0)
    data_waits = None
    last_loss = None
    # The first call(s) pay what the timed ones must not: DataLoader worker start-up, cuDNN autotuning,
    # and for the compiled step the whole compile (inside the numerics check's steps).
    start = time.perf_counter()
    if variant is None:
        step, data_waits = _baseline_step()
        step()
        batch = BATCH
    else:
        step = _fasttrick_step(variant)
        last_loss = _check_numerics(impl, variant, step)
        batch = variant.batch
    first_calls_seconds = time.perf_counter() - start

    benchmark.group = f"train-step-resnet18-{DEVICE}"
    loss = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    assert torch.isfinite(loss), f"{impl}: loss {loss.item()} after {ROUNDS + WARMUP_ROUNDS} timed steps"
    median = benchmark.stats.stats.median
    _median_seconds[impl] = median
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        impl=impl,
        batch_size=batch,
        images_per_s=round(batch / median),
        first_calls_seconds=round(first_calls_seconds, 2),
    )
    if variant is not None:
        benchmark.extra_info.update(
            precision=str(variant.amp_dtype or torch.float32).removeprefix("torch."),
            compile_mode=variant.compile_mode or "eager",
            whole_step_graph=variant.whole_step_graph,
            numerics=f"loss {last_loss:.4f} after {NUMERICS_STEPS} steps, within {LOSS_RTOL} of eager's",
        )
    if data_waits is not None:
        timed_waits = sorted(data_waits[-ROUNDS:])
        benchmark.extra_info.update(
            dataloader_workers=NUM_WORKERS, data_wait_ms=round(timed_waits[len(timed_waits) // 2] * 1e3, 2)
        )
    elif "torch-baseline" in _median_seconds:
        benchmark.extra_info["speedup_vs_baseline"] = round(
            _median_seconds["torch-baseline"] / median * batch / BATCH, 2
        )
