"""Benchmark helpers: the device under test, a timed call that synchronises, and a closing table of
the optimizer-step results (the table the GPU check prints last)."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels could only run in the interpreter, far too slow to time: the triton
# backend is then left out of the benchmarks (tests/ check its numerics under the interpreter).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

STEP_RESULTS: list[dict] = []


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def pytest_terminal_summary(terminalreporter):
    if not STEP_RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write(
        f"optimizer step on {DEVICE} ({os.environ.get('FASTTRICK_BENCH_LABEL', torch.__version__)}): median ms, GB/s "
        "at 20 B/param, speed-up over torch fused / foreach (same run)"
    )
    by_set: dict[str, dict[str, dict]] = {}
    for r in STEP_RESULTS:
        by_set.setdefault(r["param_set"], {})[r["impl"]] = r
    for param_set, rows in by_set.items():
        fused = rows.get("torch-fused", {}).get("median_ms")
        foreach = rows.get("torch-foreach", {}).get("median_ms")
        for impl, r in rows.items():
            vs_fused = f"{fused / r['median_ms']:.2f}x" if fused else "-"
            vs_foreach = f"{foreach / r['median_ms']:.2f}x" if foreach else "-"
            copy = f"{r['fraction_of_copy']:.0%} of copy" if r.get("fraction_of_copy") else ""
            write(
                f"  {param_set:<10} {impl:<20} {r['median_ms']:9.3f} ms {r['GBps']:8.1f} GB/s  "
                f"{vs_fused:>7} fused {vs_foreach:>7} foreach  {copy}"
            )


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    """Device-to-device copy bandwidth (read + write bytes per second), the ceiling a one-pass step can reach."""
    numel = (256 if DEVICE == "cuda" else 64) * 2**20  # 1 GiB / 256 MiB of fp32, far past any cache
    src = torch.randn(numel, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize()
    import time

    times = []
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / sorted(times)[len(times) // 2] / 1e9
