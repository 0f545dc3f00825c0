"""Limits a grid's runs must keep on this machine, checked before anything is written or trained: run
names the filesystem of ``--out`` can hold, and runs their device's memory can hold
(:func:`fasttrick.grid.memory.check_sizes`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError
from . import memory
from .expand import GridRun

# Room in a path for the longest file the trainer writes in a run folder: a temp name such as
# ".checkpoint.pt.k2j4h5g6.tmp" (atomic writes) is under 40 characters.
RUN_FILE_ROOM = 64


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _limits(folder: Path) -> tuple[int, int]:
    """(longest file name, longest path) of the filesystem holding ``folder``, in bytes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):  # no pathconf for this filesystem: the Linux values
        return 255, 4096


def check_run_names(runs: Sequence[GridRun], out: Path) -> None:
    """ConfigError (nothing written) for a run name, or a folder of ``--out`` still to be made, longer than
    the filesystem of ``out`` allows; a grid's names grow with its axes."""
    out = Path(out).absolute()
    existing = _existing(out)
    name_max, path_max = _limits(existing)
    problems = []
    for part in out.relative_to(existing).parts:
        if len(part.encode()) > name_max:
            problems.append(
                f"--out {out}: folder name {part[:40]!r}... is {len(part.encode())} bytes; the filesystem of "
                f"{existing} allows {name_max}: choose a shorter --out"
            )
    for run in runs:
        size = len(run.name.encode())
        if size > name_max:
            problems.append(
                f"run name {run.name[:60]!r}... is {size} characters; the filesystem of {existing} allows "
                f"{name_max} for a run folder: give the run entry a shorter name:, or use fewer axes"
            )
        elif len(str(out / run.name).encode()) + RUN_FILE_ROOM > path_max:
            problems.append(
                f"run folder {out / run.name} is too deep: its files' paths would pass the {path_max} bytes "
                f"the filesystem allows; choose a shorter --out or run name"
            )
    if problems:
        raise ConfigError(problems)


def check_limits(runs: Sequence[GridRun], out: Path, *, local: bool = True, workers: int = 1) -> None:
    """Every limit of this module; the memory check only for runs that train on this machine (``local``),
    ``workers`` of them at once."""
    check_run_names(runs, out)
    if local:
        memory.check_sizes(runs, memory.device_memory, cpu_workers=workers)
