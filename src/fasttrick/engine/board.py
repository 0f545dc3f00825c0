"""TensorBoard event files, one set per run folder, so ``tensorboard --logdir runs/`` shows a whole grid.

Written once per epoch from the epoch's metrics row (nothing per step). TensorBoard belongs to the ``study``
extra; where it is not installed, runs train as before and the first run says once that this logging is off."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

ENABLE_HINT = 'pip install tensorboard (or pip install "fasttrick[study]")'
_said_off = False
EVENT_PREFIX = "events.out.tfevents."  # how SummaryWriter names its files

# metrics.jsonl key -> TensorBoard tag: train/ and val/ side by side per quantity in the scalars view.
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "lr": "optimizer/lr",
    "images_per_s": "throughput/images_per_s",
}


def momentum_of(optimizer: torch.optim.Optimizer) -> float | None:
    """SGD's momentum, or Adam's beta1 (its momentum) for the Adam family; None when it has neither."""
    group = optimizer.param_groups[0]
    if "momentum" in group:
        return float(group["momentum"])
    betas = group.get("betas")
    return float(betas[0]) if betas else None


class EpochBoard:
    """One run folder's event file, holding every epoch so far: a resumed run rewrites it from its ``rows``
    (the checkpoint's), so a curve never has a gap or a repeated epoch whatever happened to earlier files."""

    def __init__(
        self,
        run_dir: Path,
        rows: Sequence[Mapping[str, Any]],
        optimizer: torch.optim.Optimizer,
        log: Callable[[str], None],
    ):
        self._writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _say_off(log)
            return
        for old in run_dir.glob(f"{EVENT_PREFIX}*"):
            old.unlink(missing_ok=True)
        self._writer = SummaryWriter(log_dir=str(run_dir))
        for row in rows:
            self.add(row, optimizer)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def add(self, row: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """Epoch ``row["epoch"]``'s scalars, flushed so a live TensorBoard sees them."""
        if self._writer is None:
            return
        step = int(row["epoch"])
        for key, tag in TAGS.items():
            self._writer.add_scalar(tag, float(row[key]), step)
        momentum = momentum_of(optimizer)
        if momentum is not None:
            self._writer.add_scalar("optimizer/momentum", momentum, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _say_off(log: Callable[[str], None]) -> None:
    global _said_off
    if not _said_off:
        _said_off = True
        log(f"TensorBoard logging is off (tensorboard is not installed); to enable it: {ENABLE_HINT}")
