"""Progress of one run: a tqdm bar per epoch (loss, acc, img/s, the run's ETA) on a terminal, one plain line
per epoch otherwise (CI logs, files), ending with the run's ETA. Reading the loss for the bar syncs with the
device, so it happens every ``every`` steps only, not every step.

The ETA is measured, not guessed: the epochs left times the mean time of the epochs this process has
timed (training and evaluation); on the bar, within the first epoch, from the steps timed so far."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..runfiles import format_duration

if TYPE_CHECKING:
    from tqdm import tqdm


def format_row(name: str, epochs: int, row: Mapping[str, Any]) -> str:
    return (
        f"[{name}] epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  lr {row['lr']:.4g}  "
        f"{row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f} s"
    )


class Progress:
    def __init__(
        self,
        name: str,
        epochs: int,
        log: Callable[[str], None],
        bar: bool | None = None,
        every: int = 20,
        units_after: tuple[int, float | None] = (0, None),
    ):
        """``units_after``: the grid's runs (or arrays) still to train after this one, and their measured mean
        seconds (None: none ended yet, so this run's own estimated time stands for each)."""
        self.name, self.epochs, self.log, self.every = name, epochs, log, every
        self.units_after = units_after
        self.bar_enabled = sys.stderr.isatty() if bar is None else bar
        self._bar: tqdm | None = None
        self._start = 0.0
        self._epoch = 0
        self._steps = 0
        self._timed: list[float] = []  # seconds of each epoch timed here (a resumed run's earlier ones are not)

    def eta_seconds(self, epochs_done: int) -> float | None:
        """Seconds left after ``epochs_done`` epochs, at the mean measured epoch time; None before any."""
        if not self._timed:
            return None
        return max(self.epochs - epochs_done, 0) * sum(self._timed) / len(self._timed)

    @classmethod
    def of_session(cls, name: str, epochs: int, session: Any) -> Progress:
        """Progress logging to a fasttrick.engine.Session, with its bar setting and the grid still to come."""
        return cls(name, epochs, session.log, session.bar, units_after=session.units_after)

    def eta_text(self, run_eta: float | None) -> str:
        """ "ETA <run>", with "  grid ETA <grid>" when more of the grid follows this run."""
        text = f"ETA {format_duration(run_eta)}"
        after, mean = self.units_after
        if after and run_eta is not None and self._timed:
            per_unit = mean if mean is not None else self.epochs * sum(self._timed) / len(self._timed)
            text += f"  grid ETA {format_duration(run_eta + after * per_unit)}"
        return text

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._start = time.perf_counter()
        self._epoch, self._steps = epoch, steps
        if self.bar_enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=steps, desc=f"{self.name} {epoch}/{self.epochs}", leave=False, unit="step")

    def step(self, index: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if index == 0 or (index + 1) % self.every == 0:
            seconds = max(time.perf_counter() - self._start, 1e-9)
            eta = self.eta_seconds(self._epoch)
            if eta is None:  # first epoch timed here: its steps so far, for this epoch and those after it
                per_epoch = seconds * self._steps / (index + 1)
                eta = per_epoch * (self.epochs - self._epoch + 1) - seconds
            self._bar.set_postfix(
                loss=f"{loss_sum.item() / (index + 1):.3f}",
                acc=f"{correct.item() / max(seen, 1):.3f}",
                img_s=f"{seen / seconds:.0f}",
                eta=self.eta_text(max(eta, 0.0)).removeprefix("ETA "),
            )

    def end_epoch(self, row: Mapping[str, Any] | None) -> None:
        """Close the epoch's bar and log its row with the run's ETA (an array logs its members' rows itself,
        ``None``, and its ETA here)."""
        self._timed.append(time.perf_counter() - self._start)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        eta = self.eta_seconds(self._epoch)
        if row is not None:
            self.log(f"{format_row(self.name, self.epochs, row)}  {self.eta_text(eta)}")
        elif self._epoch < self.epochs:
            self.log(f"[{self.name}] epoch {self._epoch}/{self.epochs}  {self.eta_text(eta)}")
