"""ONE training run: model, optimizer and schedule from a RunConfig, the loop, eval, checkpoints,
metrics, resume, divergence.

    from fasttrick.engine import Session, train_run
    session = Session()                      # shared by every run of the process (data, compiled model)
    outcome = train_run(run_config, run_dir, session)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig, config_warnings
from .board import EpochBoard
from .checkpoint import CHECKPOINT, load_checkpoint, rng_state, set_rng_state, writing
from .io import CheckpointWriter, MetricRow, RunStatus, write_json, write_metrics, write_status
from .optimizers import build_optimizer
from .progress import Progress
from .schedules import EpochSchedule, current_lr
from .session import Runtime, Session, autocast, reinitialize, resolve_runtime, sync

EpochHook = Callable[[str, MetricRow], None]


class Interrupted(Exception):
    """Raised by an ``on_epoch_end`` hook to stop a run as a kill would (tests use it)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: RunStatus  # FINISHED or DIVERGED
    rows: list[MetricRow]  # every epoch's metrics row, resumed ones included
    message: str | None = None


@dataclasses.dataclass
class _Parts:
    """What one run trains with, built from its config on the session's (possibly compiled) model."""

    module: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    train_loader: Any
    test_loader: Any
    optimizer: torch.optim.Optimizer
    schedule: EpochSchedule
    scaler: torch.amp.GradScaler


def train_run(
    run: RunConfig, run_dir: Path, session: Session, *, name: str | None = None, on_epoch_end: EpochHook | None = None
) -> Outcome:
    """Train ``run`` in ``run_dir``, resuming from its checkpoint.pt if there is one.

    Writes environment.json at the start; metrics.jsonl/.csv, checkpoint.pt and then status.json
    ("running", the checkpoint's epoch) after every epoch. Returns the :class:`Outcome`; the caller (the grid)
    writes result.json and the final status.json from it. ``on_epoch_end(name, row)`` runs after each
    epoch's files are on disk (raise from it to stop the run there, as a kill would). A checkpoint of
    another config, or a damaged one, raises CheckpointError; a failed write raises StorageError.
    """
    run_dir = Path(run_dir)
    name = name or run_dir.name
    rt = resolve_runtime(run)
    for note in config_warnings(run):
        session.log(f"[{name}] warning: {note}")
    set_determinism(run, rt)
    parts = _build(run, rt, session)
    rows, start_epoch = _resume(parts, run, rt, run_dir, name, session.log)
    write_file(run_dir / "metrics.jsonl", write_metrics, run_dir, rows)
    write_file(run_dir / "environment.json", write_json, run_dir / "environment.json", session.environment(rt))
    write_file(run_dir / "status.json", write_status, run_dir, RunStatus.RUNNING, start_epoch)

    progress = Progress.of_session(name, run.train.epochs, session)
    board = EpochBoard(run_dir, rows, parts.optimizer, session.log)
    writer = CheckpointWriter()
    checkpoint_path = run_dir / CHECKPOINT
    try:
        for epoch in range(start_epoch, run.train.epochs):
            row = _run_epoch(parts, run, rt, epoch, rows[-1]["elapsed_seconds"] if rows else 0.0, progress)
            rows.append(row)
            progress.end_epoch(row)
            board.add(row, parts.optimizer)
            if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
                write_file(run_dir / "metrics.jsonl", write_metrics, run_dir, rows)
                session.log(
                    f"[{name}] diverged: non-finite loss in epoch {epoch + 1} "
                    f"(train {row['train_loss']}, val {row['val_loss']})"
                )
                return Outcome(RunStatus.DIVERGED, rows, f"non-finite loss in epoch {epoch + 1}")
            parts.schedule.step(row)
            write_file(run_dir / "metrics.jsonl", write_metrics, run_dir, rows)
            # status.json names the epoch of the checkpoint on disk, so it is written after it, on the writer's thread.
            done = functools.partial(
                write_file, run_dir / "status.json", write_status, run_dir, RunStatus.RUNNING, epoch + 1
            )
            write_file(
                checkpoint_path, writer.submit, checkpoint_path, _checkpoint(parts, run, rt, epoch + 1, rows), done
            )
            if on_epoch_end is not None:
                write_file(checkpoint_path, writer.wait)  # a hook that stops the run must find this epoch's checkpoint
                on_epoch_end(name, row)
    finally:
        board.close()
        write_file(checkpoint_path, writer.wait)
    return Outcome(RunStatus.FINISHED, rows)


def write_file(path: Path, write: Callable[..., None], *args: Any) -> None:
    """``write(*args)``, an OSError raised as a StorageError naming ``path`` (a resumable interruption)."""
    with writing(path):
        write(*args)


def set_determinism(run: RunConfig, rt: Runtime) -> None:
    if run.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = rt.device.type == "cuda"
    if rt.device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def _build(run: RunConfig, rt: Runtime, session: Session) -> _Parts:
    data = session.dataset(run.data)
    prepared = session.model(run, rt)  # before the loaders: a first compile should not hold their memory
    reinitialize(prepared.module, run.seed)

    train_loader, test_loader = build_loaders(run, rt, data)
    optimizer = build_optimizer(run.optimizer, prepared.module.parameters(), rt.device)
    return _Parts(
        module=prepared.module,
        forward=prepared.forward,
        train_loader=train_loader,
        test_loader=test_loader,
        optimizer=optimizer,
        schedule=EpochSchedule(optimizer, run),
        scaler=torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16),
    )


def build_loaders(run: RunConfig, rt: Runtime, data: Any) -> tuple[Any, Any]:
    """The run's (train, test) loaders over ``data``, on its device, in its autocast dtype."""
    from ..data import build_loader

    common = dict(
        dataset=data,
        backend=run.data.loader,
        device=rt.device,
        dtype=rt.amp_dtype or torch.float32,
        batch_size=run.data.batch_size,
    )
    train_loader = build_loader("train", seed=run.seed, **common)
    test_loader = build_loader("test", **common)
    if len(train_loader) == 0:  # the config refuses this for CIFAR-10; a Session's own dataset may be smaller
        raise ValueError(
            f"data.batch_size={run.data.batch_size} is larger than the {len(data.train_images)} training images"
        )
    return train_loader, test_loader


def _resume(
    parts: _Parts, run: RunConfig, rt: Runtime, run_dir: Path, name: str, log: Callable[[str], None]
) -> tuple[list[MetricRow], int]:
    """Load the run's checkpoint (after checking it is this run's) into ``parts``; (rows so far, epochs done)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        torch.manual_seed(run.seed)  # the same RNG stream after re-initialisation, fresh or not
        return [], 0
    state = load_checkpoint(path, run.model_dump(mode="json"))
    parts.module.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.load_state_dict(state["schedule"])
    if state["scaler"]:
        parts.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], rt.device)
    start_epoch = int(state["epoch"])
    if start_epoch == 0:
        torch.manual_seed(run.seed)
    log(f"[{name}] resuming after epoch {start_epoch} from {path}")
    return list(state["rows"]), start_epoch


def _run_epoch(parts: _Parts, run: RunConfig, rt: Runtime, epoch: int, elapsed: float, progress: Progress) -> MetricRow:
    """Train and evaluate epoch ``epoch`` (0-based); its metrics row."""
    lr = current_lr(parts.optimizer)
    epoch_start = time.perf_counter()
    parts.train_loader.set_epoch(epoch)
    train_loss, train_acc, seen = _train_epoch(
        parts.module,
        parts.forward,
        parts.train_loader,
        parts.optimizer,
        parts.scaler,
        rt,
        run.train.label_smoothing,
        progress,
        epoch + 1,
    )
    train_seconds = time.perf_counter() - epoch_start
    val_loss, val_acc = _evaluate(parts.module, parts.forward, parts.test_loader, rt, run.data.batch_size, rt.compile)
    epoch_seconds = time.perf_counter() - epoch_start
    return metrics_row(
        epoch, train_loss, train_acc, val_loss, val_acc, lr, epoch_seconds, seen / train_seconds, elapsed
    )


def metrics_row(
    epoch: int,
    train_loss: float,
    train_acc: float,
    val_loss: float,
    val_acc: float,
    lr: float,
    epoch_seconds: float,
    images_per_s: float,
    elapsed: float,
) -> MetricRow:
    """Epoch ``epoch``'s (0-based) row of metrics.jsonl (fasttrick.runfiles.METRIC_KEYS); ``elapsed`` is
    the run's time before this epoch."""
    return MetricRow(
        epoch=epoch + 1,
        train_loss=train_loss,
        train_acc=train_acc,
        val_loss=val_loss,
        val_acc=val_acc,
        lr=lr,
        epoch_seconds=round(epoch_seconds, 4),
        images_per_s=round(images_per_s, 1),
        elapsed_seconds=round(elapsed + epoch_seconds, 4),
    )


def _checkpoint(parts: _Parts, run: RunConfig, rt: Runtime, epochs_done: int, rows: list[MetricRow]) -> dict[str, Any]:
    return {
        "epoch": epochs_done,
        "model": parts.module.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else None,
        "rng": rng_state(rt.device),
        "rows": rows,
        "config": run.model_dump(mode="json"),
    }


def _train_epoch(module, forward, loader, optimizer, scaler, rt: Runtime, label_smoothing, progress, epoch):
    module.train()
    loss_sum = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device, dtype=torch.int64)
    seen = steps = 0
    progress.start_epoch(epoch, len(loader))
    for images, labels in loader:
        with autocast(rt):
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        if scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # Accumulated on the device: no host sync per step.
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += labels.numel()
        progress.step(steps, loss_sum, correct, seen)
        steps += 1
    sync(rt.device)
    return loss_sum.item() / max(steps, 1), correct.item() / max(seen, 1), seen


@torch.no_grad()
def _evaluate(module, forward, loader, rt: Runtime, batch_size: int, pad: bool):
    """Mean loss and accuracy over the whole test split. The last, partial batch is zero-padded to the
    batch size (the padding's outputs dropped; BatchNorm in eval mode is per sample), so a compiled
    model sees one shape and never recompiles for it."""
    module.eval()
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    correct = torch.zeros((), device=rt.device, dtype=torch.int64)
    count = 0
    for images, labels in loader:
        n = labels.numel()
        if pad and n < batch_size:
            filler = images.new_zeros((batch_size - n, *images.shape[1:]))
            images = torch.cat([images, filler]).contiguous(memory_format=torch.channels_last)
        with autocast(rt):
            logits = forward(images)[:n].float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        count += n
    sync(rt.device)
    return loss_sum.item() / max(count, 1), correct.item() / max(count, 1)
