"""The grid folder (``--out``): one writer at a time, what it may hold, and getting it ready to train.

- **One writer.** :func:`lock_grid_folder` takes an exclusive ``flock(2)`` on ``<out>/.fasttrick-grid.lock``
  before anything in the folder is read or written,
  and the grid holds it until it ends, whichever backend trains (workers and Ray tasks write under
  their driver's lock). A second trainer on the same folder, ``--fresh`` included, stops before
  touching anything, naming the holder (pid, host, start time) from ``.fasttrick-grid.holder.json``.
  The lock dies with its process, so a killed trainer never leaves the folder locked. Limit: on a
  shared filesystem the lock is only as good as the filesystem's own locking. Linux NFS clients map
  ``flock`` to NFS byte-range locks, which hold across machines (NFSv4, or v3 with lockd); a mount
  with ``nolock``/``local_lock``, Lustre without ``-o flock``, and some FUSE filesystems lock per
  machine only, so there start one trainer per grid folder yourself. (``flock`` itself, not the
  ``filelock`` package: filelock 4 falls back to a lock file's mere existence where ``flock`` is
  missing, which a kill -9 leaves locked, and reports a read-only lock file as contention.)
- **A read-only folder** (a finished grid from elsewhere, a read-only mount) is not locked: nothing
  in it can change. Rerunning a finished grid there reads it and writes nothing; a grid with runs to
  train stops with :class:`GridFolderError`.
- **What it holds** is checked before anything trains: a run folder whose config.yaml or checkpoint
  records another config is refused (ConfigError), as are a damaged checkpoint and a malformed
  status.json (GridFolderError), each naming the file.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError, dump_yaml, first_difference, load_yaml
from ..config.errors import clip
from ..engine import (
    CHECKPOINT,
    TERMINAL,
    CheckpointError,
    RunStatus,
    atomic_write,
    config_mismatch,
    read_checkpoint,
    read_json,
    write_json,
    write_status,
)
from .expand import Grid, GridRun

LOCK_NAME = ".fasttrick-grid.lock"
HOLDER_NAME = ".fasttrick-grid.holder.json"
# A trainer that has just taken the lock writes its holder file within milliseconds; a second trainer
# started at the same instant waits this long for it, to name the holder rather than "unknown".
HOLDER_WAIT_SECONDS = 2.0
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class GridFolderError(RuntimeError):
    """The grid folder cannot be used as it is (held by another trainer, not writable, a malformed run
    file); the message names the file or the holder and what to do."""


class GridLock:
    """The held lock of a grid folder: an open descriptor with an exclusive flock (``writable`` False: a
    read-only folder, nothing held)."""

    def __init__(self, out: Path, fd: int | None):
        self.out = out
        self._fd = fd

    @property
    def writable(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            (self.out / HOLDER_NAME).unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> GridLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_grid_folder(out: Path) -> GridLock:
    """Create ``out`` if needed and take its lock; GridFolderError if another trainer holds it or ``out``
    cannot be a folder. A folder that cannot be written is returned unlocked (``writable`` False)."""
    if out.exists() and not out.is_dir():
        raise GridFolderError(f"--out {out} is a file, not a folder; name a folder (it is created if missing)")
    _refuse_foreign_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GridFolderError(f"--out {out}: cannot create the folder ({err.strerror}); choose another --out") from err
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno in _READ_ONLY:
            return GridLock(out, None)
        raise GridFolderError(f"--out {out}: cannot open its lock file ({err.strerror})") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise GridFolderError(
                f"--out {out} is in use by another trainer ({_describe_holder(out)}); wait for it to end, or use "
                "another --out"
            ) from None
        raise GridFolderError(f"--out {out}: cannot lock the folder ({err.strerror})") from err
    lock = GridLock(out, fd)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        write_json(out / HOLDER_NAME, {"pid": os.getpid(), "host": socket.gethostname(), "started": started})
    except OSError as err:
        lock.release()
        if err.errno in _READ_ONLY:
            return GridLock(out, None)
        raise GridFolderError(f"--out {out}: cannot write to the folder ({err.strerror})") from err
    return lock


def is_grid_folder(folder: Path) -> bool:
    """A folder a grid has written: it holds the lock file or grid.yaml (symlinks are not followed)."""
    return (
        folder.is_dir()
        and not folder.is_symlink()
        and any((folder / name).exists() or (folder / name).is_symlink() for name in (LOCK_NAME, "grid.yaml"))
    )


def _refuse_foreign_folder(out: Path) -> None:
    """GridFolderError, before anything is written, when ``out`` is a non-empty folder no grid wrote, or lies
    inside or holds another grid's folder: a grid then writes (and sweeps) only where it alone writes."""
    for parent in out.absolute().parents:
        if is_grid_folder(parent):
            raise GridFolderError(
                f"--out {out} lies inside the grid folder {parent}; use a folder outside it (a grid's run "
                "folders are its own)"
            )
    if not out.is_dir():
        return
    if not is_grid_folder(out) and any(out.iterdir()):
        raise GridFolderError(
            f"--out {out} is not empty and is not a grid folder (no {LOCK_NAME} or grid.yaml); use an empty or "
            "new folder, so that the grid writes and deletes nothing of yours"
        )
    for child in out.iterdir():
        if is_grid_folder(child):
            raise GridFolderError(
                f"--out {out} holds another grid's folder {child}; use a folder of its own for each grid"
            )


def _describe_holder(out: Path) -> str:
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    while True:
        try:
            holder = read_json(out / HOLDER_NAME)
            return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
        except (OSError, ValueError, TypeError, KeyError):
            if time.monotonic() > deadline:
                return f"holder unknown: {out / HOLDER_NAME} is missing or unreadable"
            time.sleep(0.05)


def run_state(run_dir: Path) -> dict[str, Any] | None:
    """status.json of a run folder, checked ({"status", "epoch", "message"}); None if there is none."""
    path = run_dir / "status.json"
    if not path.exists():
        return None
    problem: str | None
    try:
        state = read_json(path)
    except (OSError, ValueError) as err:
        state, problem = None, f"{type(err).__name__}: {err}"
    else:
        problem = None if _valid_state(state) else f"got {clip(json.dumps(state), 120)}"
    if problem:
        raise GridFolderError(
            f'{path} is malformed ({problem}); expected {{"status": {"|".join(RunStatus)}, "epoch": N, '
            '"message": text or null}. Delete it (the run then resumes from its checkpoint) or rerun with --fresh'
        )
    return {**state, "status": RunStatus(state["status"])}


def _valid_state(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and state.get("status") in tuple(RunStatus)
        and isinstance(state.get("epoch"), int)
        and not isinstance(state.get("epoch"), bool)
        and state["epoch"] >= 0
        and isinstance(state.get("message"), (str, type(None)))
    )


def check_out_folder(runs: Sequence[GridRun], out: Path, fresh: bool) -> None:
    """Refuse (ConfigError, nothing written) a run folder whose config.yaml or checkpoint records another
    config, or whose checkpoint is damaged; ``fresh`` deletes those folders, so nothing is checked."""
    linked = [str(out / run.name) for run in runs if (out / run.name).is_symlink()]
    if linked:  # wherever it points, a symlink would let training write (or --fresh delete) outside --out
        raise GridFolderError(
            f"run folders that are symlinks are not followed: {', '.join(linked)}; replace each with a real folder "
            "(move the target's files into it) or use another --out"
        )
    if fresh:
        return
    problems = []
    for run in runs:
        run_dir = out / run.name
        existing = run_dir / "config.yaml"
        if existing.is_file():
            try:
                old = load_yaml(existing.read_text())
            except Exception:  # unreadable YAML is a different config too
                old = None
            diff = first_difference(old, run.resolved())
            if diff:
                problems.append(
                    f"{existing} holds a different config ({diff}); rerun with --fresh to restart "
                    "that run, or --out to write elsewhere"
                )
                continue
        if (run_dir / CHECKPOINT).is_file():
            try:  # mmap: only the config is read, not the weights
                problem = config_mismatch(
                    run_dir / CHECKPOINT, read_checkpoint(run_dir / CHECKPOINT, mmap=True), run.resolved()
                )
            except CheckpointError as err:
                problem = str(err)
            if problem:
                problems.append(problem)
    if problems:
        raise ConfigError(problems)


def prepare_out_folder(
    grid: Grid, selected: Sequence[GridRun], lock: GridLock, *, fresh: bool, restart_failed: bool
) -> dict[str, dict[str, Any]]:
    """Write grid.yaml (when it changed) and every selected run's config.yaml and status; {run name: status}.

    Under the lock, so temp files left by a killed process are swept first. A read-only folder is only
    read: GridFolderError if a run would need anything written.
    """
    out = lock.out
    if lock.writable:
        sweep_temp_files(out, [run.name for run in grid.runs])
    _write_if_changed(out / "grid.yaml", dump_yaml(grid.document()), lock)
    states = {}
    for run in selected:
        run_dir = out / run.name
        state = run_state(run_dir) or {}
        if run_dir.exists() and fresh:
            _needs_writing(lock, run_dir)
            shutil.rmtree(run_dir)
            state = {}
        elif restart_failed and state.get("status") == RunStatus.FAILED:
            _needs_writing(lock, run_dir)
            _clear_but_checkpoint(run_dir)  # check_out_folder found the checkpoint to be this config's
            state = {}
        if not (run_dir / "config.yaml").is_file():
            _needs_writing(lock, run_dir / "config.yaml")
            atomic_write(run_dir / "config.yaml", dump_yaml(run.resolved()))
        if not state:
            _needs_writing(lock, run_dir / "status.json")
            write_status(run_dir, RunStatus.PENDING, 0)
            state = run_state(run_dir) or {}
        if state["status"] not in (*TERMINAL, RunStatus.FAILED):
            _needs_writing(lock, run_dir)
        states[run.name] = state
    return states


# atomic_write's temp names: mkstemp's ".<file>.<8 random characters>.tmp".
_TEMP_NAME = re.compile(r"^\.[^/]+\.[a-z0-9_]{8}\.tmp$")


def sweep_temp_files(out: Path, run_names: Sequence[str]) -> list[Path]:
    """Delete atomic_write's temp files (writes cut short by kill -9) in ``out`` and in the grid's own run
    folders (``run_names``): nothing else, so a file of a user's that merely looks temporary is kept.

    Safe only under the grid's lock: no other process is then writing. Symlinked folders are not entered.
    """
    folders = [out, *(out / name for name in run_names if (out / name).is_dir() and not (out / name).is_symlink())]
    swept = [
        tmp
        for folder in folders
        for tmp in folder.glob(".*.tmp")
        if _TEMP_NAME.match(tmp.name) and tmp.is_file() and not tmp.is_symlink()
    ]
    for tmp in swept:
        tmp.unlink(missing_ok=True)
    return swept


def _clear_but_checkpoint(run_dir: Path) -> None:
    for entry in run_dir.iterdir():
        if entry.name in (CHECKPOINT, "config.yaml"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _write_if_changed(path: Path, text: str, lock: GridLock) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    _needs_writing(lock, path)
    atomic_write(path, text)


def _needs_writing(lock: GridLock, path: Path) -> None:
    if not lock.writable:
        raise GridFolderError(
            f"--out {lock.out} cannot be written (read-only), and {path} would have to be: only a finished "
            "grid can be rerun from a read-only folder. Copy it somewhere writable, or use another --out"
        )
