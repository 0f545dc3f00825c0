"""The local runner: a grid's runs one after another in this process, each in its own run folder.

    <out>/grid.yaml                 the expanded, validated grid, written before anything trains
    <out>/<run name>/config.yaml    the run's resolved config
                     status.json    pending | running | finished | diverged | failed (+ epoch, message)
                     metrics.jsonl  one JSON object per finished epoch (the truth), metrics.csv the same
                     result.json    fasttrick.grid.summary.run_result of a finished or diverged run
                     diagnosis.json fasttrick.grid.diagnosis.diagnose of the same run (its failure modes)
                     environment.json, checkpoint.pt
    <out>/summary.md, summary.csv, plots/   written when the grid ends (fasttrick.grid.summary)

Rerunning the same grid into the same folder skips finished and diverged runs and resumes the others
from their last checkpoint; ``fresh`` deletes the selected runs' folders first. A run whose folder
holds a different config is refused (ConfigError) rather than resumed into a mixture.
A run that raises is marked failed and the grid goes on; an interrupt (Ctrl-C) or missing CIFAR-10
(DataSourceError, the same for every run) stops the grid.
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
from .diagnosis import diagnose
from .expand import Grid, GridRun

TERMINAL = ("finished", "diverged")


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


def run_grid(
    grid: Grid,
    out: str | Path,
    *,
    only: Sequence[str] | None = None,
    fresh: bool = False,
    session: Session | None = None,
    on_epoch_end: Callable[[str, dict[str, Any]], None] | None = None,
    summary: bool = True,
) -> dict[str, str]:
    """Run the selected runs of ``grid`` into ``out``; returns {run name: final status}."""
    from .summary import run_result, write_summary

    out = Path(out)
    selected = grid.select(only)
    check_out_folder(selected, out, fresh)
    session = session or Session()
    log = session.log

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "grid.yaml", dump_yaml(grid.document()))
    for run in selected:
        run_dir = out / run.name
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        if not (run_dir / "config.yaml").is_file():
            atomic_write(run_dir / "config.yaml", dump_yaml(run.resolved()))
        if read_status(run_dir) is None:
            write_status(run_dir, "pending", 0)
    for note in grid.warnings:
        log(f"warning: {note}")

    statuses: dict[str, str] = {}
    try:
        for index, run in enumerate(selected, start=1):
            run_dir = out / run.name
            state = read_status(run_dir) or {}
            if state.get("status") in TERMINAL:
                log(f"[{index}/{len(selected)}] {run.name}: {state['status']} already, skipped")
                statuses[run.name] = state["status"]
                continue
            log(f"[{index}/{len(selected)}] {run.name}")
            start = time.perf_counter()
            try:
                outcome = train_run(run.config, run_dir, session, name=run.name, on_epoch_end=on_epoch_end)
            except DataSourceError as err:  # every later run would fail the same way (after a download attempt)
                write_status(run_dir, "failed", 0, f"no CIFAR-10: {err}")
                statuses[run.name] = "failed"
                raise
            except (KeyboardInterrupt, Interrupted):
                state = read_status(run_dir) or {}
                write_status(run_dir, "failed", state.get("epoch", 0), "interrupted; rerun the same command to resume")
                statuses[run.name] = "failed"
                raise
            except Exception as err:
                log(f"[{run.name}] failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
                state = read_status(run_dir) or {}
                write_status(run_dir, "failed", state.get("epoch", 0), f"{type(err).__name__}: {err}")
                statuses[run.name] = "failed"
                continue
            write_json(run_dir / "result.json", run_result(outcome.rows, outcome.status))
            write_json(run_dir / "diagnosis.json", diagnose(outcome.rows, outcome.status).to_json())
            write_status(run_dir, outcome.status, outcome.rows[-1]["epoch"] if outcome.rows else 0, outcome.message)
            statuses[run.name] = outcome.status
            log(f"[{index}/{len(selected)}] {run.name}: {outcome.status} in {time.perf_counter() - start:.1f} s")
    finally:
        if summary:
            try:
                path = write_summary(out)
                log(f"summary: {path}")
            except Exception as err:  # a broken summary must not hide the runs' own outcome
                log(f"summary not written: {type(err).__name__}: {err}")
    return statuses
