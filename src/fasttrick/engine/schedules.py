"""Per-epoch learning-rate schedules from config, with a linear warm-up before any of them.

:class:`EpochSchedule` is stepped once at the end of every epoch with that epoch's metrics. During the
first ``w`` warm-up epochs the lr is ``lr * (f + (1 - f) * e / w)`` for epoch ``e`` (0-based; f the
start factor), as torch's ``LinearLR(start_factor=f, total_iters=w)``. From epoch ``w`` on, one of
torch's own schedulers takes over from the base lr, its epoch 0 being the first after the warm-up
(as ``SequentialLR`` would do it). The warm-up is done by hand so that it composes with
``ReduceLROnPlateau`` too, which ``SequentialLR`` cannot take (pytorch #68978); the plateau scheduler
only sees the metrics of epochs after the warm-up.

The state (epoch, and the torch scheduler's state with ReduceLROnPlateau's best / num_bad_epochs /
cooldown_counter) goes into every checkpoint, so a resumed run continues the same schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler

from ..config import RunConfig, resolve_epochs


def set_lr(group: dict[str, Any], value: float) -> None:
    """Set a param group's lr in place: a tensor lr (FusedSGDW's) is filled, so it stays the same tensor."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first param group's lr as a float, to 7 significant digits (fp32's precision) (a tensor lr is stored in fp32)."""
    return float(f"{float(optimizer.param_groups[0]['lr']):.7g}")


class EpochSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, run: RunConfig):
        self.optimizer = optimizer
        self.epochs = run.train.epochs
        self.warmup = run.warmup_epochs()
        self.start_factor = run.warmup.start_factor
        self.monitor: str | None = None
        self.epoch = 0  # epochs finished
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", float(group["lr"]))
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.main = self._build_main(run)
        self._apply_warmup(0)

    def _build_main(self, run: RunConfig):
        cfg, epochs = run.scheduler, run.train.epochs
        main_epochs = epochs - self.warmup

        def spec(value, minimum: int = 1) -> int:
            return resolve_epochs(value, epochs, minimum=minimum)

        opt = self.optimizer
        if cfg.name == "step":
            return lr_scheduler.StepLR(opt, step_size=spec(cfg.step_size), gamma=cfg.gamma)
        if cfg.name == "multistep":
            return lr_scheduler.MultiStepLR(opt, milestones=sorted(spec(m) for m in cfg.milestones), gamma=cfg.gamma)
        if cfg.name == "cosine":
            t_max = spec(cfg.t_max) if cfg.t_max is not None else max(1, main_epochs)
            return lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=cfg.eta_min)
        if cfg.name == "cosine_restarts":
            return lr_scheduler.CosineAnnealingWarmRestarts(
                opt, T_0=spec(cfg.t_0), T_mult=cfg.t_mult, eta_min=cfg.eta_min
            )
        if cfg.name == "plateau":
            self.monitor = cfg.monitor
            return lr_scheduler.ReduceLROnPlateau(
                opt,
                mode=cfg.mode,
                factor=cfg.factor,
                patience=spec(cfg.patience, minimum=0),
                threshold=cfg.threshold,
                threshold_mode=cfg.threshold_mode,
                cooldown=spec(cfg.cooldown, minimum=0),
                min_lr=cfg.min_lr,
            )
        if cfg.name == "constant":
            return None
        raise ValueError(f"unknown scheduler {cfg.name!r}")  # unreachable: the schema lists them all

    def _apply_warmup(self, epoch: int) -> None:
        """Set the lr for epoch ``epoch`` while it is inside the warm-up; the base lr when it just ended."""
        if self.warmup == 0 or epoch > self.warmup:
            return
        factor = 1.0 if epoch == self.warmup else self.start_factor + (1 - self.start_factor) * epoch / self.warmup
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            set_lr(group, base * factor)

    def step(self, metrics: Mapping[str, float]) -> None:
        """End of an epoch: set the lr of the next one."""
        self.epoch += 1
        if self.epoch <= self.warmup:
            self._apply_warmup(self.epoch)
            return
        if self.main is None:
            return
        if isinstance(self.main, lr_scheduler.ReduceLROnPlateau):
            value = metrics.get(self.monitor) if self.monitor is not None else None
            if value is None:
                raise KeyError(f"plateau monitors {self.monitor!r}, which this epoch did not report")
            self.main.step(float(value))
        else:
            self.main.step()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "main": self.main.state_dict() if self.main is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        if self.main is not None and state.get("main") is not None:
            self.main.load_state_dict(state["main"])


def lr_sequence(optimizer: torch.optim.Optimizer, run: RunConfig, metrics=None) -> list[float]:
    """The lr of every epoch of ``run`` (first param group), stepping a fresh schedule; for tests and
    --dry-run. ``metrics[e]`` feeds a plateau schedule (default: a constant metric)."""
    schedule = EpochSchedule(optimizer, run)
    out = []
    for epoch in range(run.train.epochs):
        out.append(current_lr(optimizer))
        schedule.step(
            metrics[epoch] if metrics is not None else {k: 0.5 for k in ("val_acc", "val_loss", "train_loss")}
        )
    return out
