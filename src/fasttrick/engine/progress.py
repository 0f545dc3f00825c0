"""Progress of one run: a tqdm bar per epoch (loss, acc, img/s) on a terminal, one plain line per epoch
otherwise (CI logs, files). Reading the loss for the bar syncs with the device, so it happens every
``every`` steps only, not every step."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tqdm import tqdm


def format_row(name: str, epochs: int, row: Mapping[str, Any]) -> str:
    return (
        f"[{name}] epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  lr {row['lr']:.4g}  "
        f"{row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f} s"
    )


class Progress:
    def __init__(self, name: str, epochs: int, log: Callable[[str], None], bar: bool | None = None, every: int = 20):
        self.name, self.epochs, self.log, self.every = name, epochs, log, every
        self.bar_enabled = sys.stderr.isatty() if bar is None else bar
        self._bar: tqdm | None = None
        self._start = 0.0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._start = time.perf_counter()
        if self.bar_enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=steps, desc=f"{self.name} {epoch}/{self.epochs}", leave=False, unit="step")

    def step(self, index: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if index == 0 or (index + 1) % self.every == 0:
            seconds = max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix(
                loss=f"{loss_sum.item() / (index + 1):.3f}",
                acc=f"{correct.item() / max(seen, 1):.3f}",
                img_s=f"{seen / seconds:.0f}",
            )

    def end_epoch(self, row: Mapping[str, Any] | None) -> None:
        """Close the epoch's bar and log its row (an array logs its members' rows itself: ``None``)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if row is not None:
            self.log(format_row(self.name, self.epochs, row))
