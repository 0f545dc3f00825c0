"""The grid runner: a grid's runs, each in its own run folder, on one of three backends.

    <out>/grid.yaml                 the expanded, validated grid, written before anything trains
    <out>/<run name>/config.yaml    the run's resolved config
                     status.json    pending | running | finished | diverged | failed | interrupted
                                    (+ epoch, message)
                     metrics.jsonl  one JSON object per finished epoch (the truth), metrics.csv the same
                     result.json    fasttrick.grid.summary.run_result of a finished or diverged run
                     diagnosis.json fasttrick.grid.diagnosis.diagnose of the same run (its failure modes)
                     environment.json, checkpoint.pt
    <out>/summary.md, summary.csv, plots/   written when the grid ends (fasttrick.grid.summary)

Backends, all calling :func:`execute_run` once per run, into the same folders:

- ``local`` with ``workers=1``: the runs one after another in this process;
- ``local`` with ``workers=N``: N worker processes on this machine (fasttrick.grid.workers);
- ``ray``: one Ray task per run, on a laptop or a cluster (fasttrick.grid.ray_backend).

Rerunning the same grid into the same folder skips finished and diverged runs, resumes pending,
running (the process was killed) and interrupted runs from their last checkpoint, and reports failed
runs (the run raised) with their error without rerunning them; ``restart_failed`` starts those over
and ``fresh`` deletes the selected runs' folders first. A run whose folder holds a different config
is refused (ConfigError) rather than resumed into a mixture. A run that raises is marked failed and
the grid goes on; an interrupt (Ctrl-C) or missing CIFAR-10 (DataSourceError, the same for every
run) stops the grid.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError, dump_yaml, load_yaml
from ..data import DataSourceError
from ..engine import Interrupted, Session, atomic_write, read_status, train_run, write_json, write_status
from ..results.diagnosis import diagnose
from .expand import Grid, GridRun

TERMINAL = ("finished", "diverged")
BACKENDS = ("local", "ray")
INTERRUPTED_MESSAGE = "interrupted; rerun the same command to resume"

EpochHook = Callable[[str, dict[str, Any]], None]


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            diff = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if diff:
                return diff
        return None
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return None if old == new else f"{path}: {old!r} -> {new!r}"


def check_out_folder(runs: Sequence[GridRun], out: Path, fresh: bool) -> None:
    """Refuse (ConfigError, nothing written) to resume a run folder that holds another config."""
    if fresh:
        return
    problems = []
    for run in runs:
        existing = out / run.name / "config.yaml"
        if not existing.is_file():
            continue
        try:
            old = load_yaml(existing.read_text())
        except Exception:
            old = None
        diff = _first_difference(old, run.resolved())
        if diff:
            problems.append(
                f"{existing} holds a different config ({diff}); rerun with --fresh to restart "
                "that run, or --out to write elsewhere"
            )
    if problems:
        raise ConfigError(problems)


def check_execution(
    backend: str, workers: int, address: str | None, gpus_per_run: float | None, cpus_per_run: int
) -> None:
    """Refuse (ConfigError) execution options that cannot work, before anything is written."""
    problems = []
    if backend not in BACKENDS:
        problems.append(f"backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if workers < 1:
        problems.append(f"--workers {workers}: must be >= 1")
    if backend != "ray" and address is not None:
        problems.append("--address is for --backend ray")
    if backend == "ray" and workers != 1:
        problems.append("--workers is for the local backend; Ray runs as many runs at once as its resources allow")
    if gpus_per_run is not None:
        if backend != "ray":
            problems.append("--gpus-per-run is for --backend ray; locally, --workers N packs N runs onto the GPUs")
        elif not 0 < gpus_per_run <= 1:
            problems.append(f"--gpus-per-run {gpus_per_run:g}: a run uses one GPU at most; use 0 < F <= 1")
    if cpus_per_run < 1 or (backend != "ray" and cpus_per_run != 1):
        problems.append(f"--cpus-per-run {cpus_per_run}: for --backend ray, >= 1 (locally: --workers)")
    if problems:
        raise ConfigError(problems)


def execute_run(run: GridRun, run_dir: Path, session: Session, *, on_epoch_end: EpochHook | None = None) -> str:
    """Train one run and record how it ended in its folder (status.json, with the error if any); its status.

    The per-run function of every backend. A run that raises is recorded as failed (with its error)
    and returned as such; an interrupt is recorded as interrupted and missing CIFAR-10 as failed,
    and both are raised again, since they stop the grid.
    """
    from ..results.result import run_result

    try:
        outcome = train_run(run.config, run_dir, session, name=run.name, on_epoch_end=on_epoch_end)
    except DataSourceError as err:  # every later run would fail the same way (after a download attempt)
        write_status(run_dir, "failed", 0, f"no CIFAR-10: {err}")
        raise
    except (KeyboardInterrupt, Interrupted):
        state = read_status(run_dir) or {}
        write_status(run_dir, "interrupted", state.get("epoch", 0), INTERRUPTED_MESSAGE)
        raise
    except Exception as err:
        session.log(f"[{run.name}] failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        state = read_status(run_dir) or {}
        message = f"{type(err).__name__}: {err}"
        write_status(run_dir, "failed", state.get("epoch", 0), message)
        return "failed"
    write_json(run_dir / "result.json", run_result(outcome.rows, outcome.status))
    write_json(run_dir / "diagnosis.json", diagnose(outcome.rows, outcome.status).to_json())
    write_status(run_dir, outcome.status, outcome.rows[-1]["epoch"] if outcome.rows else 0, outcome.message)
    return outcome.status


def mark_interrupted(run_dir: Path, message: str = INTERRUPTED_MESSAGE) -> None:
    """Record a run stopped from outside (its worker killed or cancelled) as resumable from its last epoch."""
    state = read_status(run_dir) or {}
    if state.get("status") not in (*TERMINAL, "failed"):
        write_status(run_dir, "interrupted", state.get("epoch", 0), message)


def prepare_out_folder(
    grid: Grid, selected: Sequence[GridRun], out: Path, *, fresh: bool, restart_failed: bool
) -> dict[str, dict[str, Any]]:
    """Write grid.yaml and every selected run's config.yaml and status; returns {run name: status.json}."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "grid.yaml", dump_yaml(grid.document()))
    states = {}
    for run in selected:
        run_dir = out / run.name
        state = read_status(run_dir) or {}
        if run_dir.exists() and (fresh or (restart_failed and state.get("status") == "failed")):
            shutil.rmtree(run_dir)  # a failed run restarts from scratch: its checkpoint may be what failed
            state = {}
        if not (run_dir / "config.yaml").is_file():
            atomic_write(run_dir / "config.yaml", dump_yaml(run.resolved()))
        if not state:
            write_status(run_dir, "pending", 0)
            state = read_status(run_dir) or {}
        states[run.name] = state
    return states


def prepare_data(runs: Sequence[GridRun], session: Session) -> None:
    """Build the CIFAR-10 cache once, here, before workers start, so they only read it."""
    from ..data import load_cifar10

    for root in sorted({run.config.data.root for run in runs}, key=str):
        start = time.perf_counter()
        load_cifar10(root)
        session.log(f"data: CIFAR-10 cache ready ({root or 'FASTTRICK_DATA'}) in {time.perf_counter() - start:.1f} s")


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
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: int = 1,
) -> dict[str, str]:
    """Run the selected runs of ``grid`` into ``out``; returns {run name: final status}.

    ``on_epoch_end(name, row)`` runs in the process that trains; with several workers or Ray it
    must pickle (a module-level function or object). Workers and Ray tasks load CIFAR-10 from the
    cache themselves: ``session`` gives them its log only, not its data or compiled models.
    """
    from ..results.summary import write_summary

    out = Path(out).absolute()  # Ray and worker processes may start in another directory
    selected = grid.select(only)
    check_out_folder(selected, out, fresh)
    check_execution(backend, workers, address, gpus_per_run, cpus_per_run)
    session = session or Session()
    log = session.log
    cluster = None
    if backend == "ray":
        from .ray_backend import RayCluster

        cluster = RayCluster.connect(address, log)  # before writing: no Ray, or no GPU for --gpus-per-run
    try:
        if cluster is not None:
            cluster.check_packing(selected, gpus_per_run)
        elif workers > 1:
            from .workers import check_packing

            check_packing(selected, workers)

        states = prepare_out_folder(grid, selected, out, fresh=fresh, restart_failed=restart_failed)
        for note in grid.warnings:
            log(f"warning: {note}")
        statuses: dict[str, str] = {}
        todo = []
        for run in selected:
            state = states[run.name]
            if state.get("status") in TERMINAL:
                log(f"{run.name}: {state['status']} already, skipped")
                statuses[run.name] = state["status"]
            elif state.get("status") == "failed":
                log(f"{run.name}: failed earlier ({state.get('message')}), skipped; --restart-failed reruns it")
                statuses[run.name] = "failed"
            else:
                todo.append(run)
        try:
            if cluster is not None and todo:
                prepare_data(todo, session)
                statuses.update(cluster.run(todo, out, gpus_per_run, cpus_per_run, on_epoch_end))
            elif workers > 1 and todo:
                from .workers import run_in_workers

                statuses.update(
                    run_in_workers(todo, out, workers, log, on_epoch_end, prepare=lambda: prepare_data(todo, session))
                )
            else:
                statuses.update(_run_here(todo, out, session, on_epoch_end))
        finally:
            if summary:
                try:
                    path = write_summary(out)
                    log(f"summary: {path}")
                except Exception as err:  # a broken summary must not hide the runs' own outcome
                    log(f"summary not written: {type(err).__name__}: {err}")
    finally:
        if cluster is not None:
            cluster.close()
    failed = [name for name in statuses if statuses[name] == "failed"]
    for name in failed:
        log(f"failed: {name}: {(read_status(out / name) or {}).get('message')}")
    return {run.name: statuses[run.name] for run in selected}


def _run_here(runs: Sequence[GridRun], out: Path, session: Session, on_epoch_end: EpochHook | None) -> dict[str, str]:
    statuses = {}
    for index, run in enumerate(runs, start=1):
        log_prefix = f"[{index}/{len(runs)}] {run.name}"
        session.log(log_prefix)
        start = time.perf_counter()
        statuses[run.name] = execute_run(run, out / run.name, session, on_epoch_end=on_epoch_end)
        session.log(f"{log_prefix}: {statuses[run.name]} in {time.perf_counter() - start:.1f} s")
    return statuses
