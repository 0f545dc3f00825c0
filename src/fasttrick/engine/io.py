"""Run-folder files, every one written atomically (temp file in the same folder, fsync, os.replace),
and checkpoints written on a background thread so the next epoch does not wait for the disk."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

METRIC_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "images_per_s",
    "elapsed_seconds",
)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
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


def write_status(run_dir: Path, status: str, epoch: int, message: str | None = None) -> None:
    write_json(run_dir / "status.json", {"status": status, "epoch": epoch, "message": message})


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_json(run_dir / "status.json")
    except (OSError, ValueError):
        return None


def write_metrics(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """metrics.jsonl (the truth; NaN/inf written as Python's json writes them) and metrics.csv, both whole."""
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(dict(row)) + "\n" for row in rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METRIC_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run_dir / "metrics.csv", buffer.getvalue())


def save_torch(path: Path, state: Any) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getbuffer())


def to_cpu(state: Any) -> Any:
    """A deep copy of ``state`` with every tensor cloned to the CPU (a snapshot later steps cannot change)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return state


class CheckpointWriter:
    """Writes one checkpoint at a time on a background thread; ``submit`` waits for the previous one.

    The state is snapshotted to the CPU before ``submit`` returns, so training may go on at once. A
    ResNet-18 checkpoint (weights + momentum, ~90 MB) then costs the loop a device-to-host copy, not
    the ~0.2 s of serialising and fsyncing it.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: Path, state: dict[str, Any], after: Any = None) -> None:
        self.wait()
        snapshot = to_cpu(state)

        def work() -> None:
            try:
                save_torch(path, snapshot)
                if after is not None:
                    after()
            except BaseException as err:  # surfaced by the next wait()
                self._error = err

        self._thread = threading.Thread(target=work, name="fasttrick-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
