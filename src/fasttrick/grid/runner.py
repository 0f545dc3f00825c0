"""The grid runner: a grid's runs, each in its own run folder, on one of three executors (here, in worker processes, or as Ray tasks).

    <out>/grid.yaml                 the expanded, validated grid (rewritten only when it changed)
    <out>/.fasttrick-grid.lock      held by the one trainer writing the folder (fasttrick.grid.folder)
    <out>/<run name>/config.yaml    the run's resolved config
                     status.json    pending | running | finished | diverged | failed | interrupted
                                    (+ epoch, message)
                     metrics.jsonl  one JSON object per finished epoch (the truth), metrics.csv the same
                     result.json    fasttrick.results.result.run_result of a finished or diverged run
                     diagnosis.json fasttrick.results.diagnosis.diagnose of the same run (its failure modes)
                     environment.json, checkpoint.pt
    <out>/summary.md, summary.csv, plots/   written when the grid ends (fasttrick.results.summary)

Backends, all calling :func:`fasttrick.grid.execute.execute_run` once per run, into the same folders:

- ``local`` with ``workers=1``: the runs one after another in this process;
- ``local`` with ``workers=N``: N worker processes on this machine (fasttrick.grid.workers);
- ``ray``: one Ray task per run, on a laptop or a cluster (fasttrick.grid.ray_backend).

Rerunning the same grid into the same folder skips finished and diverged runs, resumes pending,
running (the process was killed) and interrupted runs from their last checkpoint, and reports failed
runs (the run's code raised) with their error without rerunning them; ``restart_failed`` reruns those
from their checkpoint and ``fresh`` deletes the selected runs' folders first. A run folder holding
another config (config.yaml or checkpoint) is refused (ConfigError) rather than resumed into a
mixture. A run that raises is marked failed and the grid goes on; an interrupt (Ctrl-C) or missing
CIFAR-10 (DataSourceError, the same for every run) stops the grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..engine import TERMINAL, EpochHook, RunStatus, Session, read_status
from ..runfiles import format_duration, read_metrics
from .arrays import Unit, plan_units
from .estimate import warn_if_long
from .execute import execute_unit
from .expand import Grid, GridRun
from .folder import GridLock, check_out_folder, lock_grid_folder, prepare_out_folder
from .limits import check_limits
from .options import check_execution

__all__ = ["check_out_folder", "prepare_data", "run_grid"]


def prepare_data(runs: Sequence[GridRun], session: Session) -> None:
    """Build the CIFAR-10 cache once, here, before workers start, so they only read it."""
    from ..data import load_cifar10

    for root in sorted({run.config.data.root for run in runs}, key=str):
        start = time.perf_counter()
        load_cifar10(root)
        session.log(f"data: CIFAR-10 cache ready ({root or 'FASTTRICK_DATA'}) in {time.perf_counter() - start:.1f} s")


def _check_before_writing(selected, out: Path, cluster, workers: int, gpus_per_run: float | None) -> None:
    """What refuses a grid before its folder is touched: the limits, and the packing of runs on the executor."""
    check_limits(selected, out, local=cluster is None, workers=workers)
    if cluster is not None:
        cluster.check_packing(selected, gpus_per_run)
    elif workers > 1:
        from .workers import check_packing

        check_packing(selected, workers)


def run_grid(
    grid: Grid,
    out: str | Path,
    *,
    only: Sequence[str] | None = None,
    fresh: bool = False,
    restart_failed: bool = False,
    session: Session | None = None,
    on_epoch_end: EpochHook | None = None,
    summary: bool = True,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: int = 1,
    fuse: str | int = "off",
) -> dict[str, RunStatus]:
    """Run the selected runs of ``grid`` into ``out``; returns {run name: final status}. ``on_epoch_end(name,
    row)`` runs in the process that trains (with workers or Ray it must pickle); workers and Ray tasks load
    CIFAR-10 from the cache, not ``session``'s. ``fuse``: "off", "auto" or the most runs per fused array."""
    out = Path(out).absolute()  # Ray and worker processes may start in another directory
    selected = grid.select(only)
    check_execution(executor, workers, address, gpus_per_run, cpus_per_run)
    session = session or Session()
    cluster = None
    if executor == "ray":
        from .ray_backend import RayCluster

        cluster = RayCluster.connect(address, session.log)  # before writing: no Ray, or no GPU for --gpus-per-run
    try:
        _check_before_writing(selected, out, cluster, workers, gpus_per_run)
        with lock_grid_folder(out) as lock:  # held until the grid ends: one writer per grid folder
            check_out_folder(selected, out, fresh)
            states = prepare_out_folder(grid, selected, lock, fresh=fresh, restart_failed=restart_failed)
            for note in grid.warnings:
                session.log(f"warning: {note}")
            statuses, todo = _triage(selected, states, session.log)
            try:
                if todo:
                    epochs_done = _checkpoint_epochs(todo, out)
                    warn_if_long(todo, epochs_done, session.log)
                    units = plan_units(todo, fuse, epochs_done, session.log)
                    statuses.update(
                        _train(units, out, session, on_epoch_end, cluster, workers, gpus_per_run, cpus_per_run)
                    )
            finally:
                if summary:
                    _summarise(lock, session.log)
    finally:
        if cluster is not None:
            cluster.close()
    for name, status in statuses.items():
        if status in (RunStatus.FAILED, RunStatus.INTERRUPTED):
            session.log(f"{status}: {name}: {(read_status(out / name) or {}).get('message')}")
    return {run.name: statuses[run.name] for run in selected}


def _triage(
    selected: Sequence[GridRun], states: dict[str, dict[str, Any]], log: Callable[[str], None]
) -> tuple[dict[str, RunStatus], list[GridRun]]:
    """({run: status} of the runs that ended earlier, the runs to train now)."""
    statuses: dict[str, RunStatus] = {}
    todo = []
    for run in selected:
        status = states[run.name]["status"]
        if status in TERMINAL:
            log(f"{run.name}: {status} already, skipped")
            statuses[run.name] = status
        elif status == RunStatus.FAILED:
            log(f"{run.name}: failed earlier ({states[run.name]['message']}), skipped; --restart-failed reruns it")
            statuses[run.name] = RunStatus.FAILED
        else:
            todo.append(run)
    return statuses, todo


def _checkpoint_epochs(runs: Sequence[GridRun], out: Path) -> dict[str, int]:
    """{run: epochs its checkpoint holds} for the runs that have one (check_out_folder checked them)."""
    from ..engine import CHECKPOINT, read_checkpoint

    epochs = {}
    for run in runs:
        path = out / run.name / CHECKPOINT
        if path.is_file():
            epochs[run.name] = int(read_checkpoint(path, mmap=True)["epoch"])
    return epochs


def _train(
    units: Sequence[Unit],
    out: Path,
    session: Session,
    on_epoch_end: EpochHook | None,
    cluster: Any,
    workers: int,
    gpus_per_run: float | None,
    cpus_per_run: int,
) -> dict[str, RunStatus]:
    todo = [run for unit in units for run in unit.runs]
    if cluster is not None:
        prepare_data(todo, session)
        return cluster.run(units, out, gpus_per_run, cpus_per_run, on_epoch_end)
    if workers > 1:
        from .workers import run_in_workers

        return run_in_workers(
            units, out, workers, session.log, on_epoch_end, prepare=lambda: prepare_data(todo, session)
        )
    return _run_here(units, out, session, on_epoch_end)


def _summarise(lock: GridLock, log: Callable[[str], None]) -> None:
    from ..results.summary import write_summary

    if not lock.writable:
        log(f"summary: {lock.out} is read-only; its summary is left as it is")
        return
    try:
        log(f"summary: {write_summary(lock.out)}")
    except Exception as err:  # a broken summary must not hide the runs' own outcome
        log(f"summary not written: {type(err).__name__}: {err}")


def _run_here(
    units: Sequence[Unit], out: Path, session: Session, on_epoch_end: EpochHook | None
) -> dict[str, RunStatus]:
    statuses: dict[str, RunStatus] = {}
    times: list[float] = []  # per unit: the first one's training wall time (its set-up is one-off), then whole
    for index, unit in enumerate(units, start=1):
        log_prefix = f"[{index}/{len(units)}] {unit.name}"
        session.log(log_prefix)
        unit_start = time.perf_counter()
        session.units_after = (len(units) - index, sum(times) / len(times) if times else None)
        try:
            statuses.update(execute_unit(unit, out, session, on_epoch_end=on_epoch_end))
        finally:
            session.units_after = (0, None)
        ended = ", ".join(
            f"{statuses[run.name]}" if not unit.fused else f"{run.name} {statuses[run.name]}" for run in unit.runs
        )
        seconds, wall = time.perf_counter() - unit_start, _wall_seconds(out, unit)
        if wall is None:
            session.log(f"{log_prefix}: {ended} in {format_duration(seconds)}")
        else:
            session.log(
                f"{log_prefix}: {ended}: wall time {format_duration(wall)} (as in summary.md), "
                f"{format_duration(seconds)} with set-up"
            )
        times.append(seconds if times or wall is None else wall)
        if index < len(units):
            left, mean = len(units) - index, sum(times) / len(times)
            session.log(f"grid ETA {format_duration(left * mean)} ({left} left at {format_duration(mean)} each)")
    return statuses


def _wall_seconds(out: Path, unit: Unit) -> float | None:
    """The unit's run wall time as summary.md gives it: training and evaluation, from its metrics."""
    rows = read_metrics(out / unit.runs[0].name / "metrics.jsonl")
    if not rows or rows[-1].get("elapsed_seconds") is None:
        return None
    return float(rows[-1]["elapsed_seconds"])
