"""Benchmark helpers: the device under test, a device sync for timed calls, the copy-bandwidth ceiling, and
the machine's load (/proc/loadavg) at the start and end of the session in the JSON's machine_info: a CPU
figure from a shared machine means little without it.

`python benchmarks/summarize.py bench.json` turns a `--benchmark-json` file into the comparison table."""

from __future__ import annotations

import os
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


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])  # 1, 5 and 15-minute load averages
    except OSError:
        return "unknown"


_SESSION_START_LOAD = _loadavg()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["loadavg_start"] = _SESSION_START_LOAD
    machine_info["cpu_count"] = os.cpu_count()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["machine_info"]["loadavg_end"] = _loadavg()
