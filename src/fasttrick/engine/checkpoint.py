"""A run's checkpoint.pt: what goes in, and the checks before anything comes out.

A checkpoint holds only what ``torch.load(weights_only=True)`` admits: tensors, and dicts, lists,
tuples, strings, numbers, booleans and None (numpy's RNG keys are stored as a tensor). Loading it
therefore never runs code, whoever wrote the file: a run folder copied from elsewhere, or a shared
``--out``, can be resumed safely. A checkpoint records the resolved config of the run that wrote it,
and resumes only into a run with that same config; a damaged file is named, not passed on as
torch's error.

Writing a run file can fail for reasons outside the run (disk full, an I/O error, a read-only or
vanished mount): :func:`writing` turns those OSErrors into :class:`StorageError`, which names the
file and the cause and which the grid records as ``interrupted`` (resumable) rather than failed.
"""

from __future__ import annotations

import contextlib
import errno
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..config import first_difference

CHECKPOINT = "checkpoint.pt"
KEYS = ("epoch", "model", "optimizer", "schedule", "scaler", "rng", "rows", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: damaged, not a checkpoint, or written by another config."""


class StorageError(OSError):
    """Writing ``path`` failed for a reason outside the run (ENOSPC, EIO, EROFS, ...): the run is resumable."""

    def __init__(self, path: Path, cause: OSError):
        reason = cause.strerror or str(cause)
        code = errno.errorcode.get(cause.errno, "") if cause.errno else ""
        super().__init__(cause.errno, f"cannot write {path}: {reason}{f' ({code})' if code else ''}")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Re-raise an OSError from the block as a :class:`StorageError` naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        raise StorageError(path, err) from err


def rng_state(device: torch.device) -> dict[str, Any]:
    legacy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    name, keys, pos, has_gauss, cached = legacy_state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        # numpy's uint32 key array as an int64 tensor: weights_only loading admits tensors, not ndarrays.
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def read_checkpoint(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's contents, loaded without running code; CheckpointError naming ``path`` if it is
    damaged, not a checkpoint, or holds anything but tensors and plain containers (``mmap``: tensors
    are mapped, not read, for a look at the config only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        refused = "weights only load failed" in str(err).lower()
        what = "holds objects other than tensors and plain data (refused unread)" if refused else "is damaged"
        raise CheckpointError(
            f"checkpoint {path} {what} ({type(err).__name__}: {first[:200]}); delete it to start that run "
            "over, or rerun with --fresh"
        ) from err
    missing = [key for key in KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a fasttrick checkpoint (no {', '.join(missing)}); delete it to start that "
            "run over, or rerun with --fresh"
        )
    return state


def config_mismatch(path: Path, state: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Why the checkpoint at ``path`` (its ``state``) cannot resume the run whose resolved config is ``config``."""
    diff = first_difference(state["config"], dict(config))
    if diff is None:
        return None
    return (
        f"checkpoint {path} was written by another config ({diff}); it resumes only the run it records. "
        "Delete it (or rerun with --fresh) to start that run over"
    )


def load_checkpoint(path: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to belong to the run whose resolved config is ``config``."""
    state = read_checkpoint(path)
    problem = config_mismatch(path, state, config)
    if problem:
        raise CheckpointError(problem)
    return state
