"""Which runs of a grid train together as fused arrays (``--fuse auto|off|K``), and how many at once.

A unit of work is one run, or an array of runs (fasttrick.engine.train_array) that share everything but
their optimizer's hyper-parameters, schedule and warm-up (fasttrick.engine.array_key) and resume from
the same epoch. The local runner, the workers and Ray all take units.

- ``off``: every run alone (the units are the runs).
- ``K``: arrays of at most K members.
- ``auto``: arrays when this machine's measured gain says so. A short probe times a few training steps
  of one model and of an array of :data:`PROBE_MEMBERS` at the runs' width, batch and precision (eager,
  random data); the runs fuse when the array's aggregate images/s beat one model's by
  :data:`MIN_GAIN`. On a GPU the array size is then capped by the measured memory of arrays of one and
  two members (fasttrick.grid.memory). Results are cached per machine and shape in the fasttrick cache,
  so a rerun does not measure again.

A group of n compatible runs with a cap of K becomes ceil(n / K) arrays of near-equal size (25 runs at
K = 16: 13 + 12, not 16 + 9), so no array waits long for a small last one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .expand import GridRun

# Fused members needed to beat separate runs for `auto` to fuse: below 1.2x the array is not worth
# losing per-run scheduling freedom (and on a 2-core CPU the measured gain at K=4 is noisy by ~10%).
MIN_GAIN = 1.2
PROBE_MEMBERS = 4
PROBE_STEPS = 3  # timed steps, after one untimed step (allocation, cuDNN's choice of algorithms)
# An array's size when nothing else caps it: beyond 32 members the gain of one more is small, while a
# failure in shared code costs every member its epoch.
MAX_MEMBERS = 32
CACHE_FILE = "fuse-probe.json"


@dataclasses.dataclass(frozen=True)
class Unit:
    """One run, or an array of runs trained together; ``name`` labels it in logs."""

    runs: tuple[GridRun, ...]

    @property
    def fused(self) -> bool:
        return len(self.runs) > 1

    @property
    def name(self) -> str:
        if not self.fused:
            return self.runs[0].name
        return f"array of {len(self.runs)} ({', '.join(r.name for r in self.runs)})"


def parse_fuse(value: str) -> str | int:
    """``--fuse``'s value: "auto", "off", or a number of members >= 1 (ConfigError otherwise)."""
    if value in ("auto", "off"):
        return value
    try:
        members = int(value)
    except ValueError:
        members = 0
    if members < 1:
        raise ConfigError([f"--fuse {value!r}: use auto, off, or the most runs per array (a whole number >= 1)"])
    return members


def compatible_groups(runs: Sequence[GridRun], start_epochs: dict[str, int]) -> list[list[GridRun]]:
    """The runs partitioned by what an array's members must share, in grid order."""
    from ..engine import array_key

    groups: dict[tuple, list[GridRun]] = {}
    for run in runs:
        groups.setdefault((array_key(run.config), start_epochs.get(run.name, 0)), []).append(run)
    return list(groups.values())


def split(group: Sequence[GridRun], most: int) -> list[Unit]:
    """``group`` in ceil(n / most) arrays of near-equal size, in order."""
    count = math.ceil(len(group) / max(most, 1))
    size, extra = divmod(len(group), count)
    units, start = [], 0
    for index in range(count):
        end = start + size + (index < extra)
        units.append(Unit(tuple(group[start:end])))
        start = end
    return units


def plan_units(
    runs: Sequence[GridRun],
    fuse: str | int,
    start_epochs: dict[str, int],
    log: Callable[[str], None],
    measure: Callable[[GridRun, int], float] | None = None,
    fit: Callable[[GridRun], int] | None = None,
) -> list[Unit]:
    """The units to train ``runs`` in. ``measure(run, K)`` (default :func:`measured_gain`) and ``fit(run)``
    (default :func:`members_that_fit`) are only called for ``auto``; tests pass simulated ones."""
    if fuse == "off":
        return [Unit((run,)) for run in runs]
    units: list[Unit] = []
    for group in compatible_groups(runs, start_epochs):
        most = min(MAX_MEMBERS, fuse) if isinstance(fuse, int) else _auto_members(group, log, measure, fit)
        units += split(group, most) if len(group) > 1 else [Unit(tuple(group))]
    return units


def describe_plan(runs: Sequence[GridRun], fuse: str | int) -> list[str]:
    """``--dry-run``'s lines on arrays: the arrays ``fuse`` forms (for ``auto``, the groups of
    compatible runs, whose fusing is measured when the grid starts)."""
    if fuse == "off":
        return ["fuse off: every run trains alone"]
    groups = [g for g in compatible_groups(runs, {}) if len(g) > 1]
    if fuse == "auto":
        if not groups:
            return ["fuse auto: no two runs can share an array (they differ in more than optimizer and schedule)"]
        lines = [f"fuse auto: {len(groups)} group(s) of runs that can share an array; measured at the start:"]
        lines += [f"  {len(g)} runs: {', '.join(r.name for r in g)}" for g in groups]
        return lines
    arrays = [unit for unit in plan_units(runs, fuse, {}, lambda line: None) if unit.fused]
    alone = len(runs) - sum(len(unit.runs) for unit in arrays)
    lines = [f"fuse {fuse}: {len(arrays)} array(s), {alone} run(s) alone"]
    lines += [f"  array of {len(u.runs)}: {', '.join(r.name for r in u.runs)}" for u in arrays]
    return lines


def _auto_members(
    group: Sequence[GridRun],
    log: Callable[[str], None],
    measure: Callable[[GridRun, int], float] | None,
    fit: Callable[[GridRun], int] | None,
) -> int:
    if len(group) < 2:
        return 1
    first = group[0]
    members = min(PROBE_MEMBERS, len(group))
    gain = (measure or measured_gain)(first, members)
    if gain < MIN_GAIN:
        log(
            f"fuse auto: an array of {members} ran at {gain:.2f}x the images/s of one run here "
            f"(< {MIN_GAIN}x): {len(group)} runs like {first.name} train one by one"
        )
        return 1
    most = min(MAX_MEMBERS, (fit or members_that_fit)(first))
    log(
        f"fuse auto: an array of {members} ran at {gain:.2f}x the images/s of one run here: "
        f"{len(group)} runs like {first.name} train in arrays of at most {most}"
    )
    return most


def _cache_path() -> Path:
    from ..data.sources import cache_root

    return cache_root() / CACHE_FILE


def _shape_key(run: GridRun, members: int, device: Any) -> str:
    import torch

    c = run.config
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    return json.dumps(
        [name, torch.__version__, c.model.width, c.model.channels_last, c.data.batch_size, c.train.precision, members]
    )


def _cached(key: str, compute: Callable[[], float]) -> float:
    path = _cache_path()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if not isinstance(table, dict):
        table = {}
    if isinstance(table.get(key), (int, float)):
        return float(table[key])
    value = compute()
    table[key] = value
    try:
        from ..runfiles import atomic_write

        atomic_write(path, json.dumps(table, indent=1))
    except OSError:  # a read-only cache only costs the next grid another measurement
        pass
    return value


def measured_gain(run: GridRun, members: int) -> float:
    """Aggregate training images/s of an array of ``members`` over one model's, on ``run``'s device,
    width, batch and precision (eager, random data); cached per machine and shape."""
    from ..engine import resolve_runtime

    rt = resolve_runtime(run.config)
    return _cached(_shape_key(run, members, rt.device), lambda: _time_ratio(run, members, rt))


def _time_ratio(run: GridRun, members: int, rt: Any) -> float:
    import torch

    from ..models import FusedResNet18, resnet18

    c = run.config
    batch = c.data.batch_size

    def seconds_per_step(model: torch.nn.Module) -> float:
        model = model.to(rt.device)
        if c.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 32, 32, device=rt.device)
        if c.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        start = 0.0
        for step in range(PROBE_STEPS + 1):
            if step == 1:
                _sync(rt.device)
                start = time.perf_counter()
            with torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None):
                loss = model(x).float().logsumexp(-1).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(rt.device)
        return (time.perf_counter() - start) / PROBE_STEPS

    one = seconds_per_step(resnet18(width=c.model.width))
    array = seconds_per_step(FusedResNet18(members, width=c.model.width))
    return members * one / array


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def members_that_fit(run: GridRun) -> int:
    """The most members of ``run``'s shape one GPU holds, from the measured peaks of arrays of one and
    two (fasttrick.grid.memory); :data:`MAX_MEMBERS` on a CPU."""
    from ..engine import resolve_runtime
    from . import memory

    rt = resolve_runtime(run.config)
    if rt.device.type != "cuda":
        return MAX_MEMBERS
    # In a fresh (spawned) process, whose CUDA context goes with it.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        one, two = pool.map(memory.probe_run_memory, [run, run], [1, 2])
    return memory.members_fitting(one, two)
