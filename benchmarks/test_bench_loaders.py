"""Loader throughput: images/s for one epoch of training batches (batch 512, augmentation on), and the
cache load time. ``pytest benchmarks/test_bench_loaders.py --benchmark-only``.

Throughput uses a full-size synthetic training set (50 000 random uint8 images): the loaders' work
does not depend on pixel values, and the benchmark then runs without FASTTRICK_DATA. Each timed
call runs one whole epoch (97 batches of 512) and, on CUDA, synchronises before returning.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fasttrick.data import Cifar10, build_loader, dali_import_error, load_cifar10

BATCH = 512
DALI_SKIP = pytest.mark.skipif(dali_import_error() is not None, reason="DALI not installed")
CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def full_size() -> Cifar10:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(50_000, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, size=(10_000, 32, 32, 3), dtype=np.uint8)
    return Cifar10.from_arrays(
        train, rng.integers(0, 10, 50_000), test, rng.integers(0, 10, 10_000), [str(i) for i in range(10)], "random"
    )


@pytest.mark.parametrize(
    "backend, device, dtype",
    [
        pytest.param("dali", "cpu", torch.float32, marks=DALI_SKIP, id="dali-cpu-fp32"),
        pytest.param("torch", "cpu", torch.float32, id="torch-cpu-fp32"),
        pytest.param("dali", "cuda", torch.bfloat16, marks=[DALI_SKIP, CUDA_SKIP], id="dali-cuda-bf16"),
        pytest.param("torch", "cuda", torch.bfloat16, marks=CUDA_SKIP, id="torch-cuda-bf16"),
    ],
)
def test_training_epoch_throughput(benchmark, full_size, backend, device, dtype):
    loader = build_loader("train", dataset=full_size, backend=backend, device=device, dtype=dtype, batch_size=BATCH)

    def one_epoch() -> int:
        count = 0
        for images, _ in loader:
            count += len(images)
        if device == "cuda":
            torch.cuda.synchronize()
        return count

    benchmark.group = f"loader-train-epoch-{device}"
    images = benchmark.pedantic(one_epoch, rounds=3, warmup_rounds=1, iterations=1)
    assert images == 50_000 // BATCH * BATCH
    benchmark.extra_info.update(
        images_per_s=round(images / benchmark.stats.stats.mean),
        images_per_s_best=round(images / benchmark.stats.stats.min),
        batch_size=BATCH,
        dtype=str(dtype),
        threads=torch.get_num_threads() if backend == "torch" else min(8, os.cpu_count() or 1),
        device=torch.cuda.get_device_name() if device == "cuda" else f"cpu x{os.cpu_count()}",
    )


def test_cache_load(benchmark, tmp_path_factory):
    if not os.environ.get("FASTTRICK_DATA"):
        pytest.skip("FASTTRICK_DATA is unset: point it at CIFAR-10 to time the cache load")
    cache_dir = tmp_path_factory.mktemp("fasttrick-cache")
    load_cifar10(cache_dir=cache_dir)  # decode once, untimed
    benchmark.group = "cache-load"
    data = benchmark.pedantic(load_cifar10, kwargs=dict(cache_dir=cache_dir), rounds=5, warmup_rounds=1)
    assert len(data.train_images) == 50_000 and len(data.test_images) == 10_000
    benchmark.extra_info.update(megabytes=round(data.nbytes / 1e6, 1), seconds=round(benchmark.stats.stats.mean, 3))
