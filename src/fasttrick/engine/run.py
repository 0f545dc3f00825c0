"""One training run: seeded ResNet-18 (channels-last, AMP, compiled once per process), optimizer and
schedule from config, per-epoch eval, metrics, atomic checkpoints, resume, divergence.

:class:`Session` holds what every run of a process shares: the decoded data set and the model,
compiled once. A run re-initialises that same module's weights in place from its seed, so
``torch.compile``'s graphs (train and eval) are reused and nothing recompiles between runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataConfig, RunConfig, config_warnings
from .io import CheckpointWriter, write_json, write_metrics, write_status
from .optimizers import build_optimizer
from .progress import Progress
from .schedules import EpochSchedule, current_lr

CHECKPOINT = "checkpoint.pt"
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class Interrupted(Exception):
    """Raised by an ``on_epoch_end`` hook to stop a run as a kill would (tests use it)."""


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a run executes on this machine, resolved from its config's "auto"s."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32, no autocast
    compile: bool

    @property
    def precision(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.amp_dtype]


def resolve_runtime(run: RunConfig) -> Runtime:
    train = run.train
    if train.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={train.device!r} but CUDA is not available here; use --device cpu")
    precision = train.precision if train.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    compile_ = train.compile if train.compile != "auto" else device.type == "cuda"
    return Runtime(device, _AMP_DTYPES[precision], bool(compile_))


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str  # "finished" | "diverged"
    rows: list[dict[str, Any]]  # every epoch's metrics row, resumed ones included
    message: str | None = None


@dataclasses.dataclass
class PreparedModel:
    module: nn.Module  # the model itself: state_dict, re-initialisation
    forward: Callable[[torch.Tensor], torch.Tensor]  # the compiled callable (or the module when eager)
    compile_seconds: float = 0.0


def reinitialize(module: nn.Module, seed: int) -> None:
    """Fresh weights from ``seed``, in place: same tensors, same memory format, so compiled graphs stay valid."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.reset_parameters()  # BatchNorm: running stats too
    for p in module.parameters():
        p.grad = None


class Session:
    """What the runs of one process share: data sets by source, and models compiled once.

    ``log`` receives every line of output; ``bar`` forces the progress bar on or off (default: on
    when stderr is a terminal); ``dataset`` (a fasttrick.data.Cifar10) replaces CIFAR-10 from
    ``data.root`` for every run (tests, notebooks), subsets still applied.
    """

    def __init__(self, log: Callable[[str], None] | None = None, bar: bool | None = None, dataset=None):
        self.log = log or (lambda line: print(line, flush=True))
        self.bar = bar
        self._dataset = dataset
        self._data: dict[Any, Any] = {}
        self._models: dict[Any, PreparedModel] = {}
        self._environment: dict[str, Any] | None = None

    # -- data ---------------------------------------------------------------------------------

    def dataset(self, cfg: DataConfig):
        key = (cfg.root, cfg.train_subset, cfg.test_subset)
        if key not in self._data:
            from ..data import load_cifar10

            full_key = (cfg.root, None, None)
            if full_key not in self._data:
                self._data[full_key] = self._dataset if self._dataset is not None else load_cifar10(cfg.root)
            self._data[key] = subset(self._data[full_key], cfg.train_subset, cfg.test_subset)
        return self._data[key]

    # -- model --------------------------------------------------------------------------------

    def model(self, run: RunConfig, rt: Runtime) -> PreparedModel:
        m, t = run.model, run.train
        key = (
            m.name,
            m.width,
            m.channels_last,
            str(rt.device),
            rt.amp_dtype,
            rt.compile,
            t.compile_mode,
            t.compile_backend,
        )
        prepared = self._models.get(key)
        if prepared is None:
            from ..models import resnet18

            module = resnet18(width=m.width).to(rt.device)
            if m.channels_last:
                module = module.to(memory_format=torch.channels_last)
            prepared = PreparedModel(module, module)
            if rt.compile:
                mode = None if t.compile_mode == "default" else t.compile_mode
                prepared.forward = torch.compile(module, mode=mode, backend=t.compile_backend)
                prepared.compile_seconds = self._warm_up(prepared, run, rt)
                self.log(
                    f"compiled the model ({t.compile_backend}, {t.compile_mode}) in {prepared.compile_seconds:.1f} s"
                )
            self._models[key] = prepared
        return prepared

    def _warm_up(self, prepared: PreparedModel, run: RunConfig, rt: Runtime) -> float:
        """Compile the train (fwd+bwd) and eval graphs now, on random data, so no run's epoch pays for it."""
        start = time.perf_counter()
        batch = run.data.batch_size
        x = torch.randn(batch, 3, 32, 32, device=rt.device, dtype=rt.amp_dtype or torch.float32)
        x = x.contiguous(memory_format=torch.channels_last) if run.model.channels_last else x
        y = torch.randint(0, 10, (batch,), device=rt.device)
        with _autocast(rt):
            prepared.module.train()
            F.cross_entropy(prepared.forward(x).float(), y).backward()
            prepared.module.eval()
            with torch.no_grad():
                prepared.forward(x)
        _sync(rt.device)
        return time.perf_counter() - start

    # -- facts for run folders ----------------------------------------------------------------

    def environment(self, rt: Runtime) -> dict[str, Any]:
        if self._environment is None:
            from ..env import environment_report

            self._environment = {**environment_report(), **git_facts()}
        return {**self._environment, "device": str(rt.device), "precision": rt.precision, "compile": rt.compile}


def subset(data, train: int | None, test: int | None):
    """The first ``train`` / ``test`` images of a fixed shuffle (seed 0): the same subset for every run."""
    if train is None and test is None:
        return data
    rng = np.random.default_rng(0)
    order_train = rng.permutation(len(data.train_images))[: train or len(data.train_images)]
    order_test = rng.permutation(len(data.test_images))[: test or len(data.test_images)]
    return dataclasses.replace(
        data,
        train_images=np.ascontiguousarray(data.train_images[np.sort(order_train)]),
        train_labels=np.ascontiguousarray(data.train_labels[np.sort(order_train)]),
        test_images=np.ascontiguousarray(data.test_images[np.sort(order_test)]),
        test_labels=np.ascontiguousarray(data.test_labels[np.sort(order_test)]),
    )


def git_facts() -> dict[str, Any]:
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def _autocast(rt: Runtime):
    return torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def train_run(
    run: RunConfig,
    run_dir: Path,
    session: Session,
    *,
    name: str | None = None,
    on_epoch_end: Callable[[str, dict[str, Any]], None] | None = None,
) -> Outcome:
    """Train ``run`` in ``run_dir``, resuming from its checkpoint.pt if there is one.

    Writes environment.json at the start; metrics.jsonl/.csv, checkpoint.pt and status.json
    ("running", epoch) after every epoch. Returns the :class:`Outcome`; the caller (the grid runner)
    writes result.json and the final status.json from it. ``on_epoch_end(name, row)`` runs after each
    epoch's files are on disk (raise from it to stop the run there, as a kill would).
    """
    run_dir = Path(run_dir)
    name = name or run_dir.name
    rt = resolve_runtime(run)
    log = session.log
    for note in config_warnings(run):
        log(f"[{name}] warning: {note}")

    if run.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = rt.device.type == "cuda"
    if rt.device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    data = session.dataset(run.data)
    prepared = session.model(run, rt)  # before the loaders: a first compile should not hold their memory
    module, forward = prepared.module, prepared.forward
    reinitialize(module, run.seed)

    from ..data import build_loader

    loader_dtype = rt.amp_dtype or torch.float32
    common = dict(
        dataset=data, backend=run.data.loader, device=rt.device, dtype=loader_dtype, batch_size=run.data.batch_size
    )
    train_loader = build_loader("train", seed=run.seed, **common)
    test_loader = build_loader("test", **common)
    if len(train_loader) == 0:
        raise ValueError(
            f"data.batch_size={run.data.batch_size} is larger than the {len(data.train_images)} training images"
        )

    optimizer = build_optimizer(run.optimizer, module.parameters(), rt.device)
    schedule = EpochSchedule(optimizer, run)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)

    rows: list[dict[str, Any]] = []
    start_epoch = 0
    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], rt.device)
        rows = list(state["rows"])
        start_epoch = int(state["epoch"])
        log(f"[{name}] resuming after epoch {start_epoch} from {checkpoint_path}")
    if start_epoch == 0:
        torch.manual_seed(run.seed)  # the same RNG stream after re-initialisation, fresh or not
    write_metrics(run_dir, rows)
    write_json(run_dir / "environment.json", session.environment(rt))
    write_status(run_dir, "running", start_epoch)

    epochs = run.train.epochs
    progress = Progress(name, epochs, log, session.bar)
    writer = CheckpointWriter()
    status = "finished"
    elapsed = rows[-1]["elapsed_seconds"] if rows else 0.0
    try:
        for epoch in range(start_epoch, epochs):
            lr = current_lr(optimizer)
            epoch_start = time.perf_counter()
            train_loader.set_epoch(epoch)
            train_loss, train_acc, seen = _train_epoch(
                module, forward, train_loader, optimizer, scaler, rt, run.train.label_smoothing, progress, epoch + 1
            )
            train_seconds = time.perf_counter() - epoch_start
            val_loss, val_acc = _evaluate(module, forward, test_loader, rt, run.data.batch_size, pad=rt.compile)
            epoch_seconds = time.perf_counter() - epoch_start
            elapsed += epoch_seconds
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": lr,
                "epoch_seconds": round(epoch_seconds, 4),
                "images_per_s": round(seen / train_seconds, 1),
                "elapsed_seconds": round(elapsed, 4),
            }
            rows.append(row)
            progress.end_epoch(row)
            if not _finite(train_loss, val_loss):
                status = "diverged"
                write_metrics(run_dir, rows)
                log(f"[{name}] diverged: non-finite loss in epoch {epoch + 1} (train {train_loss}, val {val_loss})")
                break
            schedule.step(row)
            write_metrics(run_dir, rows)
            state = {
                "epoch": epoch + 1,
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": _rng_state(rt.device),
                "rows": rows,
                "config": run.model_dump(mode="json"),
            }
            writer.submit(checkpoint_path, state)
            write_status(run_dir, "running", epoch + 1)
            if on_epoch_end is not None:
                writer.wait()  # a hook that stops the run must find this epoch's checkpoint on disk
                on_epoch_end(name, row)
    finally:
        writer.wait()

    message = None if status == "finished" else f"non-finite loss in epoch {rows[-1]['epoch']}"
    return Outcome(status, rows, message)


def _train_epoch(module, forward, loader, optimizer, scaler, rt: Runtime, label_smoothing, progress, epoch):
    module.train()
    loss_sum = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device, dtype=torch.int64)
    seen = steps = 0
    progress.start_epoch(epoch, len(loader))
    for images, labels in loader:
        with _autocast(rt):
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
    _sync(rt.device)
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
        with _autocast(rt):
            logits = forward(images)[:n].float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        count += n
    _sync(rt.device)
    return loss_sum.item() / max(count, 1), correct.item() / max(count, 1)
