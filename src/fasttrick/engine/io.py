"""Checkpoints: written atomically (through fasttrick.runfiles.atomic_write) on a background thread so the
next epoch does not wait for the disk. The other run-folder files (status, metrics, JSON) live in
fasttrick.runfiles, which needs no torch; they are re-exported here for the engine's callers."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import torch

from ..runfiles import (
    METRIC_KEYS,
    TERMINAL,
    MetricRow,
    RunStatus,
    atomic_write,
    read_json,
    read_status,
    write_json,
    write_metrics,
    write_status,
)

__all__ = [
    "METRIC_KEYS",
    "TERMINAL",
    "CheckpointWriter",
    "MetricRow",
    "RunStatus",
    "atomic_write",
    "read_json",
    "read_status",
    "save_torch",
    "to_cpu",
    "write_json",
    "write_metrics",
    "write_status",
]


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
