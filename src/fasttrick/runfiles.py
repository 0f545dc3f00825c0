"""Run-folder files without torch: the atomic writer, and the JSON, status and metrics readers and writers.

The ground floor under the trainer (fasttrick.engine writes a run folder through these) and the results
package (fasttrick.results reads run folders and writes summaries through these), so that both create files
the same way: atomically (temp file in the same folder, fsync, os.replace) and with the permissions the
process's umask gives an ordinary new file (0644 under the usual umask 022), not mkstemp's 0600.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, TypedDict


class RunStatus(str, Enum):
    """A run's state, as status.json holds it. A str: a status equals its value ("finished"), and JSON,
    f-strings and str() write the value."""

    PENDING = "pending"  # not started, or reset by --restart-failed
    RUNNING = "running"  # training (status.json's epoch: the last checkpoint's)
    FINISHED = "finished"
    DIVERGED = "diverged"  # a loss went NaN/inf; the run stopped, the grid went on
    FAILED = "failed"  # the run's own code raised; skipped until --restart-failed
    INTERRUPTED = "interrupted"  # stopped from outside (Ctrl-C, a killed worker, a failed write); resumable

    def __str__(self) -> str:  # the value, as str's own (Python 3.12 made Enum's the member's name)
        return self.value


# A rerun skips these runs; every other status trains again (failed ones only under --restart-failed).
TERMINAL = (RunStatus.FINISHED, RunStatus.DIVERGED)


class MetricRow(TypedDict):
    """One epoch of a run, as the trainer writes it to metrics.jsonl (a reader may meet NaN/inf in the losses
    of a diverged run, and must use :func:`finite`)."""

    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float  # the lr the epoch trained with
    epoch_seconds: float
    images_per_s: float
    elapsed_seconds: float  # training time since the run started, resumed epochs included


# metrics.csv's columns, in this order.
METRIC_KEYS: tuple[str, ...] = tuple(MetricRow.__annotations__)


def _process_umask() -> int:
    """The umask, read once at import: os.umask can only be read by setting it, which would race with a
    checkpoint thread creating files later, so it is read before any such thread exists."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# open(path, "w") creates a file 0666 & ~umask; mkstemp creates 0600 whatever the umask says.
FILE_MODE = 0o666 & ~_process_umask()


def atomic_write(path: Path, data: bytes | memoryview | str) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new, never half.

    The file gets `FILE_MODE` (what the umask gives a new file), so metrics, statuses and summaries on a
    shared ``--out`` are readable by the same people.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_status(run_dir: Path, status: RunStatus, epoch: int, message: str | None = None) -> None:
    write_json(run_dir / "status.json", {"status": status, "epoch": epoch, "message": message})


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """status.json's content; None when it is missing, unreadable or not a JSON object."""
    try:
        state = read_json(run_dir / "status.json")
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_metrics(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """metrics.jsonl (the truth; NaN/inf written as Python's json writes them) and metrics.csv, both whole."""
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(dict(row)) + "\n" for row in rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METRIC_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run_dir / "metrics.csv", buffer.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows. A line that is not a JSON object with an ``epoch`` (the trainer killed mid-append)
    is skipped with a warning rather than losing the whole run. Python's json reads the NaN/Infinity it writes."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            warnings.warn(f"{path}:{number}: skipped, not JSON ({error})", stacklevel=2)
            continue
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            warnings.warn(f"{path}:{number}: skipped, not a metrics row (an object with an int epoch)", stacklevel=2)
            continue
        rows.append(row)
    return rows


def finite(value: Any) -> float | None:
    """A metric value as a float, or None when it is missing or not finite (a diverged run's NaN/inf) or not a
    number: the one meaning of "missing" every reader of metrics uses."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_duration(seconds: float | None) -> str:
    """42.1 s, 3m 05s, 1h 02m: seconds for short runs, coarser units for long ones (console and summary alike)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
