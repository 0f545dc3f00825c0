"""Benchmark helpers: the device under test, a device sync for timed calls, and the copy-bandwidth ceiling.

`python benchmarks/summarize.py bench.json` turns a `--benchmark-json` file into the comparison table."""

from __future__ import annotations

import time

import pytest
import torch

# Without a GPU, Triton kernels could only run in the interpreter, far too slow to time: the triton
# backend is then left out of the benchmarks (tests/ check its numerics under the interpreter).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    """Device-to-device copy bandwidth (read + write bytes per second), the ceiling a one-pass step can reach."""
    numel = (256 if DEVICE == "cuda" else 64) * 2**20  # 1 GiB / 256 MiB of fp32, far past any cache
    src = torch.randn(numel, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / sorted(times)[len(times) // 2] / 1e9
