"""Reading a grid folder: its grid.yaml and every run folder in it, as `RunRecord`s.

Nothing here follows a symlink: a run folder, or a run file, that is a symlink is skipped with a warning, so a
report over a folder someone sent you reads (and writes) only inside the folders it was given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ..runfiles import RunStatus, read_metrics, read_status
from .diagnosis import Diagnosis, diagnose
from .result import malformed, plausible_rows, run_result

GRID_FILE = "grid.yaml"
# libyaml's loader, when PyYAML has it: a resolved config.yaml (560 bytes) parses in 3.3 ms instead of 29 ms on
# the shared 2-core machine, and a report reads one per run; the same safe subset of YAML either way.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# A folder under the grid folder is a run folder when the trainer has written any of these in it.
RUN_MARKERS = ("config.yaml", "status.json", "metrics.jsonl")


class NotAGridFolder(ValueError):
    """The folder is not a grid's output folder (no grid.yaml, or no run folders in it yet), or a folder the
    results would be written into is a symlink."""


@dataclass(frozen=True)
class RunRecord:
    """What a run folder holds, as far as the results need it."""

    name: str
    status: str  # a RunStatus value, or "unknown" when status.json is unreadable
    status_epoch: int | None
    message: str | None
    metrics: list[dict[str, Any]]
    config: dict[str, Any]  # the run's config.yaml as written (nested); {} when missing or unreadable

    @property
    def result(self) -> dict[str, Any]:
        return run_result(self.metrics, self.status)

    @cached_property
    def diagnosis(self) -> Diagnosis:
        """The run's failure modes, from its metrics (and its status: the trainer's "diverged" counts)."""
        return diagnose(self.metrics, self.status)

    @property
    def label(self) -> str:
        """The run's name, with its status when it is not a plain finished run (plot legends)."""
        return self.name if self.status == RunStatus.FINISHED else f"{self.name} ({self.status})"


def read_grid(grid_dir: Path) -> list[RunRecord]:
    """Every run folder of a grid, in the grid's order (grid.yaml), then any others by name.

    Raises `NotAGridFolder` when grid_dir has no grid.yaml or no run folder yet.
    """
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise NotAGridFolder(f"{grid_dir} is not a grid folder: no such folder")
    if not own_file(grid_dir / GRID_FILE):
        hint = ""
        if any((grid_dir / marker).exists() for marker in RUN_MARKERS):
            hint = f"; it looks like a run folder, its grid folder would be {grid_dir.parent}"
        raise NotAGridFolder(f"{grid_dir} is not a grid folder: no {GRID_FILE} in it{hint}")
    run_dirs = {}
    for entry in sorted(grid_dir.iterdir()):
        if entry.is_symlink():
            warnings.warn(f"{entry}: a symlink, not followed (a run folder must be a folder)", stacklevel=2)
        elif entry.is_dir() and any((entry / marker).exists() for marker in RUN_MARKERS):
            run_dirs[entry.name] = entry
    if not run_dirs:
        raise NotAGridFolder(f"{grid_dir} has a {GRID_FILE} but no run folders yet: no run has started")
    grid_order = [name for name in _run_names(read_grid_file(grid_dir)) if name in run_dirs]
    names = grid_order + sorted(run_dirs.keys() - set(grid_order))
    return [_read_run(run_dirs[name]) for name in names]


def read_grid_file(grid_dir: Path) -> dict[str, Any]:
    """grid.yaml as a mapping ({} when unreadable, with a warning; a bare list of runs becomes {"runs": it})."""
    document = read_yaml(Path(grid_dir) / GRID_FILE)
    if isinstance(document, list):
        return {"runs": document}
    return document if isinstance(document, dict) else {}


def read_yaml(path: Path) -> Any:
    """A YAML file in a run or grid folder, read safely; None when missing, a symlink or unreadable."""
    if not own_file(path):
        return None
    try:
        return yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except (OSError, yaml.YAMLError) as error:
        warnings.warn(f"{path}: unreadable ({error})", stacklevel=3)
        return None


def own_file(path: Path) -> bool:
    """A regular file that is not a symlink (a symlink is never followed; one found is warned about)."""
    if path.is_symlink():
        warnings.warn(f"{path}: a symlink, not followed", stacklevel=3)
        return False
    return path.is_file()


def own_folder(path: Path) -> Path:
    """path, for writing into: refused (NotAGridFolder) when it is a symlink, which could point anywhere."""
    if path.is_symlink():
        raise NotAGridFolder(
            f"{path} is a symlink (to {path.readlink()}); remove it: results are not written through it"
        )
    return path


def _read_run(run_dir: Path) -> RunRecord:
    rows = read_metrics(run_dir / "metrics.jsonl") if own_file(run_dir / "metrics.jsonl") else []
    metrics = plausible_rows(rows, str(run_dir / "metrics.jsonl"))
    state: dict[str, Any] = {}
    if own_file(run_dir / "status.json"):
        state = read_status(run_dir) or {"status": "unknown"}
        if state["status"] == "unknown":
            warnings.warn(f"{run_dir / 'status.json'}: unreadable; status shown as unknown", stacklevel=3)
    config = read_yaml(run_dir / "config.yaml")
    epoch, message = state.get("epoch"), state.get("message")
    if epoch is not None and malformed({"epoch": epoch}):
        warnings.warn(
            f"{run_dir / 'status.json'}: epoch {epoch!r} is malformed (not a whole number >= 0)", stacklevel=3
        )
        epoch = None
    return RunRecord(
        name=run_dir.name,
        status=str(state.get("status", "unknown" if metrics else RunStatus.PENDING)),
        status_epoch=epoch,
        message=None if message is None else str(message),
        metrics=metrics,
        config=config if isinstance(config, dict) else {},
    )


def _run_names(document: dict[str, Any]) -> list[str]:
    """Run names in grid.yaml's order: a list of named runs or a mapping name -> config under ``runs``, or such a
    mapping as the whole document."""
    runs = document.get("runs")
    if isinstance(runs, dict):
        return [str(name) for name in runs]
    if isinstance(runs, list):
        return [str(run["name"]) for run in runs if isinstance(run, dict) and "name" in run]
    return [str(name) for name, config in document.items() if isinstance(config, dict)]
