"""One run (or one fused array of runs) into its folder(s), and how it ended: the per-unit functions of every
backend (local, workers, Ray).

How a run ends, in status.json:

- ``finished`` / ``diverged``: it trained to the end, or its loss went non-finite (result.json and
  diagnosis.json written too);
- ``failed``: the run's own code raised (an exception in training); a rerun reports it, and
  ``--restart-failed`` restarts it (from its checkpoint, which check_out_folder found to be its own);
- ``interrupted``: stopped from outside, and resumable by rerunning the same command: Ctrl-C, a
  killed worker (after its retry), a file that could not be written (disk full, I/O error: the message
  names the file and the cause), or no CIFAR-10.

A run on the CPU trains with :func:`cpu_threads` torch threads, whichever backend runs it: another
thread count sums convolution gradients in another order, so the numbers would depend on the executor.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path

from ..data import DataSourceError
from ..engine import (
    TERMINAL,
    EpochHook,
    Interrupted,
    Outcome,
    RunStatus,
    Session,
    StorageError,
    read_status,
    train_array,
    train_run,
    write_json,
    write_status,
    writing,
)
from ..results.diagnosis import diagnose
from .arrays import Unit
from .expand import GridRun
from .options import cpu_threads

INTERRUPTED_MESSAGE = "interrupted; rerun the same command to resume"

__all__ = [
    "INTERRUPTED_MESSAGE",
    "EpochHook",
    "execute_array",
    "execute_run",
    "execute_unit",
    "mark_interrupted",
    "record_outcome",
]


def execute_run(run: GridRun, run_dir: Path, session: Session, *, on_epoch_end: EpochHook | None = None) -> RunStatus:
    """Train one run and record how it ended in its folder (status.json, with the error if any); its status.

    A run that raises is recorded as failed (with its error), a write that fails as interrupted, and
    both are returned; an interrupt and missing CIFAR-10 are recorded as interrupted and raised again,
    since they stop the grid.
    """
    try:
        outcome = train_run(run.config, run_dir, session, name=run.name, on_epoch_end=on_epoch_end)
        record_outcome(run_dir, outcome)
    except DataSourceError as err:  # every later run would fail the same way (after a download attempt)
        mark_interrupted(run_dir, f"no CIFAR-10: {err}")
        raise
    except (KeyboardInterrupt, Interrupted):
        mark_interrupted(run_dir)
        raise
    except StorageError as err:
        message = f"{err}; free the space or fix the folder, then rerun the same command to resume"
        session.log(f"[{run.name}] interrupted: {message}")
        mark_interrupted(run_dir, message, session)
        return RunStatus.INTERRUPTED
    except Exception as err:
        return _failed(run, run_dir, session, err)
    return outcome.status


def execute_unit(
    unit: Unit, out: Path, session: Session, *, on_epoch_end: EpochHook | None = None
) -> dict[str, RunStatus]:
    """A unit of work (one run, or an array of runs) into its folders; {run name: status}."""
    if _on_cpu(unit.runs[0].config.train.device):
        import torch

        torch.set_num_threads(cpu_threads())  # recorded in environment.json as cpu_threads
    if unit.fused:
        return execute_array(unit.runs, out, session, on_epoch_end=on_epoch_end)
    run = unit.runs[0]
    return {run.name: execute_run(run, out / run.name, session, on_epoch_end=on_epoch_end)}


def _on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    import torch

    return device == "auto" and not torch.cuda.is_available()


def record_outcome(run_dir: Path, outcome: Outcome) -> None:
    """A run that trained to its end or diverged: result.json, diagnosis.json, then its final status."""
    from ..results.result import run_result

    with writing(run_dir / "result.json"):
        write_json(run_dir / "result.json", run_result(outcome.rows, outcome.status))
    with writing(run_dir / "diagnosis.json"):
        write_json(run_dir / "diagnosis.json", diagnose(outcome.rows, outcome.status).to_json())
    with writing(run_dir / "status.json"):
        write_status(run_dir, outcome.status, outcome.rows[-1]["epoch"] if outcome.rows else 0, outcome.message)


def execute_array(
    runs: Sequence[GridRun], out: Path, session: Session, *, on_epoch_end: EpochHook | None = None
) -> dict[str, RunStatus]:
    """Train ``runs`` as one fused array (fasttrick.engine.train_array), each into ``out / run.name``,
    recording how each ended as :func:`execute_run` records a run; {run name: status}.

    A member that diverges is recorded as soon as it does (the others go on). What stops the array
    stops every member still training, as it would stop a run: an exception in the shared code marks
    them failed (with the error), a failed write interrupted, an interrupt or missing CIFAR-10
    interrupted and is raised again.
    """
    dirs = {run.name: out / run.name for run in runs}
    statuses: dict[str, RunStatus] = {}

    def member_ended(name: str, outcome: Outcome) -> None:
        record_outcome(dirs[name], outcome)
        statuses[name] = outcome.status

    def still_training() -> list[GridRun]:
        return [run for run in runs if run.name not in statuses]

    try:
        train_array(
            [run.config for run in runs],
            list(dirs.values()),
            session,
            names=list(dirs),
            on_epoch_end=on_epoch_end,
            on_member_end=member_ended,
        )
    except DataSourceError as err:
        for run in still_training():
            mark_interrupted(dirs[run.name], f"no CIFAR-10: {err}")
        raise
    except (KeyboardInterrupt, Interrupted):
        for run in still_training():
            mark_interrupted(dirs[run.name])
        raise
    except StorageError as err:
        message = f"{err}; free the space or fix the folder, then rerun the same command to resume"
        for run in still_training():
            session.log(f"[{run.name}] interrupted: {message}")
            mark_interrupted(dirs[run.name], message, session)
            statuses[run.name] = RunStatus.INTERRUPTED
    except Exception as err:
        for run in still_training():
            statuses[run.name] = _failed(run, dirs[run.name], session, err)
    return {run.name: statuses[run.name] for run in runs}


def _failed(run: GridRun, run_dir: Path, session: Session, err: BaseException) -> RunStatus:
    session.log(f"[{run.name}] failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
    _record(run_dir, RunStatus.FAILED, f"{type(err).__name__}: {err}", session)
    return RunStatus.FAILED


def mark_interrupted(run_dir: Path, message: str = INTERRUPTED_MESSAGE, session: Session | None = None) -> None:
    """Record a run stopped from outside (its worker killed or cancelled, a failed write) as resumable
    from its last epoch; a run that already ended keeps its status."""
    state = read_status(run_dir)
    if not isinstance(state, dict) or state.get("status") not in (*TERMINAL, RunStatus.FAILED):
        _record(run_dir, RunStatus.INTERRUPTED, message, session)


def _record(run_dir: Path, status: RunStatus, message: str, session: Session | None) -> None:
    """status.json with the epoch reached so far; if even that cannot be written (the disk is full), the
    last status stays ("running": resumable too) and the reason goes to the log."""
    state = read_status(run_dir)
    epoch = state.get("epoch", 0) if isinstance(state, dict) else 0
    try:
        write_status(run_dir, status, epoch if isinstance(epoch, int) else 0, message)
    except OSError as err:
        line = f"[{run_dir.name}] {status}: {message} (status.json not written: {err})"
        (session.log if session is not None else print)(line)
