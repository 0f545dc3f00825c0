"""One training step (forward + backward + optimizer step) of CIFAR ResNet-18, three ways, in one run:

    pytest benchmarks/test_bench_train.py --benchmark-only

- torch-baseline: what a plain PyTorch script does. fp32 (cuDNN's default TF32 convolutions on
  Ampere+ left on, as such a script would), NCHW, eager, torch.optim.SGD's for-loop (foreach=False),
  batches from a torchvision-transform DataLoader (RandomCrop(32, padding=4), RandomHorizontalFlip,
  ToTensor, Normalize on PIL images in worker processes) over a synthetic in-memory 50 000-image
  CIFAR-shaped set; the timed call includes fetching the batch and copying it to the device.
- fasttrick-eager: channels-last, bf16 autocast on CUDA (fp32 on CPU), FusedSGDW, on a fixed batch
  already on the device (the loaders are timed by test_bench_loaders.py).
- fasttrick-compiled: the same with torch.compile(model) (default mode). Skipped on CPU unless
  FASTTRICK_BENCH_COMPILE=1: on the 2-core dev machine the compile alone (cold inductor cache) took
  55-61 s, past this file's ~60 s CPU budget.

Batch 512 on CUDA, 32 on CPU (a CPU step takes ~0.7 s). extra_info carries images/s and, for the
fasttrick steps, the speed-up over the baseline when the baseline ran in the same session. Each timed
call is one step plus a device sync.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

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

BATCH = 512 if DEVICE == "cuda" else 32
ROUNDS, WARMUP_ROUNDS = (30, 5) if DEVICE == "cuda" else (5, 1)
HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
AMP_DTYPE = torch.bfloat16 if DEVICE == "cuda" else None
# The baseline's per-image PIL -> tensor transforms cost ~150 us an image on the 2-core dev CPU, so a
# batch of 512 is ~75 ms of one worker. 12 workers (of the GPU host's 16 cores; the main process and the
# pin-memory thread keep theirs) hand over a batch every ~6 ms, which should hide inside an fp32 step;
# extra_info's data_wait_ms says whether the step still waited. On the 2-core CPU one worker is enough
# (32 images are ~5 ms beside a step of ~0.7 s) and leaves the cores to the step.
NUM_WORKERS = max(1, min(12, (os.cpu_count() or 4) - 2)) if DEVICE == "cuda" else 1
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
COMPILE_ON_CPU = os.environ.get("FASTTRICK_BENCH_COMPILE") == "1"

IMPLEMENTATIONS = ("torch-baseline", "fasttrick-eager", "fasttrick-compiled")
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


def _fasttrick_step(compiled: bool) -> Callable[[], torch.Tensor]:
    model = resnet18().to(DEVICE, memory_format=torch.channels_last)
    optimizer = FusedSGDW(model.parameters(), **HYPER)
    forward = torch.compile(model) if compiled else model
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 32, 32, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,), generator=gen).to(DEVICE)

    def step() -> torch.Tensor:
        with torch.autocast(DEVICE, dtype=AMP_DTYPE, enabled=AMP_DTYPE is not None):
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        return loss

    return step


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_train_step(benchmark, impl):
    if impl == "fasttrick-compiled" and DEVICE == "cpu" and not COMPILE_ON_CPU:
        pytest.skip("compiling ResNet-18 fwd+bwd takes ~60 s on a 2-core CPU; FASTTRICK_BENCH_COMPILE=1 runs it")
    torch.manual_seed(0)
    data_waits = None
    if impl == "torch-baseline":
        step, data_waits = _baseline_step()
    else:
        step = _fasttrick_step(compiled=impl == "fasttrick-compiled")
    # The first call pays what the timed ones must not: DataLoader worker start-up, cuDNN autotuning,
    # and for the compiled step the whole compile.
    start = time.perf_counter()
    step()
    first_call_seconds = time.perf_counter() - start

    benchmark.group = f"train-step-resnet18-{DEVICE}"
    loss = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    assert torch.isfinite(loss), f"{impl}: loss {loss.item()} after {ROUNDS + WARMUP_ROUNDS + 1} steps"
    median = benchmark.stats.stats.median
    _median_seconds[impl] = median
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        impl=impl,
        batch_size=BATCH,
        images_per_s=round(BATCH / median),
        first_call_seconds=round(first_call_seconds, 2),
    )
    if data_waits is not None:
        timed_waits = sorted(data_waits[-ROUNDS:])
        benchmark.extra_info.update(
            dataloader_workers=NUM_WORKERS, data_wait_ms=round(timed_waits[len(timed_waits) // 2] * 1e3, 2)
        )
    elif "torch-baseline" in _median_seconds:
        benchmark.extra_info["speedup_vs_baseline"] = round(_median_seconds["torch-baseline"] / median, 2)
