"""Several runs trained side by side as ONE fused array: K ResNet-18s in one network (FusedResNet18), fed
one augmented batch per step, each member with its own optimizer state, schedule and files.

    from fasttrick.engine import Session, train_array
    outcomes = train_array([run_a, run_b], [dir_a, dir_b], Session())   # one Outcome per member

Why: a 32x32 ResNet-18 under-fills a big GPU; K members make every kernel K times larger, K-fold fewer launches.

What members share is fixed by :func:`array_key`: every input of the batch stream (seed, data,
batch) and every shape and setting of the network and the loop. A run's batches depend only on
(seed, epoch, batch size) (fasttrick.data.plan), so one batch per step is exactly the batch each
separate run would draw. What differs per member: the optimizer's hyper-parameters, the schedule and
the warm-up.

To the rest of the package a member is a run: it writes exactly the files
:func:`fasttrick.engine.train_run` writes, its checkpoint holds a plain ResNet-18 state dict and its own
optimizer's state dict in that optimizer's standard format, so a member resumes as a separate run and a
separate run's checkpoint resumes as a member. The loss is the sum of the member means (each member's
gradients are those of its own mean loss). A member whose loss goes non-finite is marked diverged and
frozen (no more steps, no more files); grouped convolutions, per-channel BatchNorm and a grouped head keep
its NaNs out of the others.

How members step (:class:`MemberSteps`): FusedSGDW members in one launch over the whole array, with a
per-member table of lr / momentum / dampening / weight decay; every other optimizer (torch SGD, Adam,
AdamW, NAdam) as each member's own torch optimizer over views of its slices (``torch.optim`` updates in
place, so the views update the array). Under fp16 each member has its own GradScaler, so an inf in one
member skips that member's step only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, config_warnings
from ..models import FusedResNet18, member_cross_entropy
from .board import EpochBoard
from .checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, rng_state, set_rng_state
from .io import CheckpointWriter, MetricRow, RunStatus, write_json, write_metrics, write_status
from .members import MemberSteps
from .optimizers import build_optimizer
from .progress import Progress, format_row
from .run import EpochHook, Outcome, build_loaders, metrics_row, set_determinism, write_file
from .schedules import EpochSchedule, current_lr
from .session import Runtime, Session, autocast, keep_large_blocks_on_the_heap, reinitialize, resolve_runtime, sync

# A FusedSGDW member's own values, each a column of the array's table (FusedSGDW.set_member).
_MEMBER_VALUES = ("lr", "momentum", "dampening", "weight_decay")

MemberEndHook = Callable[[str, Outcome], None]


def array_key(run: RunConfig) -> tuple:
    """What the members of one array must share: the batch stream, the network, the loop, and the
    optimizer family (and FusedSGDW's group-wide flags). Runs with equal keys can train as one array."""
    opt = run.optimizer
    if opt.name == "fused_sgdw":
        family: tuple = (opt.name, opt.nesterov, opt.decoupled_weight_decay, opt.backend)
    elif opt.name == "sgd":
        family = (opt.name,)
    else:  # adam, adamw, nadam: each member steps its own optimizer, so the three mix freely
        family = ("adam-family",)
    return (
        run.seed,
        run.data.model_dump_json(),
        run.model.model_dump_json(),
        run.train.model_dump_json(),
        family,
    )


@dataclasses.dataclass
class _Member:
    name: str
    run: RunConfig
    run_dir: Path
    params: list[torch.Tensor]  # views of its slices of the array's params, shaped as a plain ResNet-18's
    optimizer: torch.optim.Optimizer  # its own optimizer over `params`: schedule, state_dict, (maybe) steps
    schedule: EpochSchedule
    scaler: torch.amp.GradScaler
    writer: CheckpointWriter
    rows: list[MetricRow] = dataclasses.field(default_factory=list)
    outcome: Outcome | None = None  # set when the member diverged (frozen from then on)


def train_array(
    runs: Sequence[RunConfig],
    run_dirs: Sequence[Path],
    session: Session,
    *,
    names: Sequence[str] | None = None,
    on_epoch_end: EpochHook | None = None,
    on_member_end: MemberEndHook | None = None,
) -> list[Outcome]:
    """Train ``runs`` as one array, member k in ``run_dirs[k]``, resuming from their checkpoints.

    The runs must share :func:`array_key` (ValueError otherwise) and, when resuming, their checkpoints
    the same epoch (CheckpointError otherwise: the grid forms arrays of runs at the same epoch). Writes
    what :func:`fasttrick.engine.train_run` writes, per member; returns one :class:`Outcome` per member,
    in order. ``on_epoch_end(name, row)`` runs for each live member after its epoch's files are on disk;
    ``on_member_end(name, outcome)`` when a member ends: at once when it diverges, else after the last
    epoch (the grid records its result then, as it records a run's).
    """
    runs, run_dirs = list(runs), [Path(d) for d in run_dirs]
    names = list(names) if names is not None else [d.name for d in run_dirs]
    if not runs or len(runs) != len(run_dirs) or len(names) != len(runs):
        raise ValueError(f"train_array: {len(runs)} runs, {len(run_dirs)} folders and {len(names)} names")
    keys = {array_key(run) for run in runs}
    if len(keys) != 1:
        raise ValueError(
            "train_array: the runs differ in more than optimizer hyper-parameters, schedule and warm-up "
            f"(seed, data, model, train settings or optimizer family): {', '.join(names)}"
        )
    first = runs[0]
    rt = resolve_runtime(first)
    for name, run in zip(names, runs, strict=True):
        for note in config_warnings(run):
            session.log(f"[{name}] warning: {note}")
    set_determinism(first, rt)
    if rt.device.type == "cpu":
        keep_large_blocks_on_the_heap()
    array = _Array.build(runs, run_dirs, names, rt, session)
    start_epoch = array.resume(session.log)
    _start_files(array, session.environment(rt), names, start_epoch)
    progress = Progress.of_session(f"array of {len(runs)}", first.train.epochs, session)
    boards = [EpochBoard(m.run_dir, m.rows, m.optimizer, session.log) for m in array.members]  # one file each
    try:
        for epoch in range(start_epoch, first.train.epochs):
            if all(m.outcome is not None for m in array.members):
                break
            array.run_epoch(epoch, progress)
            for member, board in zip(array.members, boards, strict=True):
                if member.outcome is None:
                    board.add(member.rows[-1], member.optimizer)
                    array.end_member_epoch(member, epoch, session.log, on_epoch_end, on_member_end)
    finally:
        for member, board in zip(array.members, boards, strict=True):
            board.close()
            write_file(member.run_dir / CHECKPOINT, member.writer.wait)
    for member in array.members:
        if member.outcome is None:
            member.outcome = Outcome(RunStatus.FINISHED, member.rows)
            if on_member_end is not None:
                on_member_end(member.name, member.outcome)
    return [m.outcome for m in array.members if m.outcome is not None]


def _start_files(array: _Array, environment: dict[str, Any], names: list[str], start_epoch: int) -> None:
    """Each member's metrics, environment (naming its array) and "running" status, as train_run starts a run."""
    for member in array.members:
        d = member.run_dir
        write_file(d / "metrics.jsonl", write_metrics, d, member.rows)
        member_environment = {**environment, "array": {"members": len(names), "runs": names}}
        write_file(d / "environment.json", write_json, d / "environment.json", member_environment)
        write_file(d / "status.json", write_status, d, RunStatus.RUNNING, start_epoch)


@dataclasses.dataclass
class _Array:
    """An array being trained: the fused network, the shared loaders, the members and how they step."""

    rt: Runtime
    module: FusedResNet18
    forward: Callable[[torch.Tensor], torch.Tensor]
    train_loader: Any
    test_loader: Any
    members: list[_Member]
    steps: MemberSteps

    @classmethod
    def build(
        cls, runs: list[RunConfig], run_dirs: list[Path], names: list[str], rt: Runtime, session: Session
    ) -> _Array:
        first, count = runs[0], len(runs)
        data = session.dataset(first.data)
        prepared = session.model(first, rt, members=count)
        module = prepared.module
        assert isinstance(module, FusedResNet18)  # Session.model with members
        _initialize_members(module, first, rt)
        train_loader, test_loader = build_loaders(first, rt, data)
        params: list[torch.Tensor] = list(module.parameters())
        fp16 = rt.amp_dtype == torch.float16
        members = []
        for k, (run, run_dir, name) in enumerate(zip(runs, run_dirs, names, strict=True)):
            views = module.member_views(k)
            optimizer = build_optimizer(run.optimizer, views, rt.device)
            members.append(
                _Member(
                    name=name,
                    run=run,
                    run_dir=run_dir,
                    params=views,
                    optimizer=optimizer,
                    schedule=EpochSchedule(optimizer, run),
                    scaler=torch.amp.GradScaler(rt.device.type, enabled=fp16),
                    writer=CheckpointWriter(),
                )
            )
        return cls(
            rt=rt,
            module=module,
            forward=prepared.forward,
            train_loader=train_loader,
            test_loader=test_loader,
            members=members,
            steps=MemberSteps(params, members, fp16),
        )

    def resume(self, log: Callable[[str], None]) -> int:
        """Load each member's checkpoint, if it has one; the epoch they all resume after."""
        epochs = set()
        for k, member in enumerate(self.members):
            path = member.run_dir / CHECKPOINT
            if not path.is_file():
                epochs.add(0)
                continue
            state = load_checkpoint(path, member.run.model_dump(mode="json"))
            self.module.load_member(k, state["model"])
            self.steps.load_member_state_dict(k, state["optimizer"])
            member.schedule.load_state_dict(state["schedule"])
            if state["scaler"]:
                member.scaler.load_state_dict(state["scaler"])
            member.rows = list(state["rows"])
            epochs.add(int(state["epoch"]))
            if int(state["epoch"]) > 0:
                set_rng_state(state["rng"], self.rt.device)  # the same for every member: one process, one stream
                log(f"[{member.name}] resuming after epoch {int(state['epoch'])} from {path}")
        if len(epochs) != 1:
            folders = ", ".join(str(m.run_dir) for m in self.members)
            raise CheckpointError(
                f"the members of one array must resume from the same epoch, but their checkpoints are at epochs "
                f"{sorted(epochs)} ({folders}); train them separately (--fuse off) or rerun with --fresh"
            )
        start = epochs.pop()
        if start == 0:
            torch.manual_seed(self.members[0].run.seed)  # as a fresh separate run: the same RNG stream
        return start

    def run_epoch(self, epoch: int, progress: Progress) -> None:
        """Train and evaluate epoch ``epoch`` (0-based) for every member; each live member's row appended."""
        lrs = [current_lr(m.optimizer) for m in self.members]
        self.steps.sync()
        epoch_start = time.perf_counter()
        self.train_loader.set_epoch(epoch)
        train_loss, train_acc, seen = self._train_epoch(progress, epoch + 1)
        train_seconds = time.perf_counter() - epoch_start
        val_loss, val_acc = self._evaluate()
        epoch_seconds = time.perf_counter() - epoch_start
        for k, member in enumerate(self.members):
            if member.outcome is not None:
                continue
            elapsed = member.rows[-1]["elapsed_seconds"] if member.rows else 0.0
            member.rows.append(
                metrics_row(
                    epoch,
                    train_loss[k],
                    train_acc[k],
                    val_loss[k],
                    val_acc[k],
                    lrs[k],
                    epoch_seconds,
                    seen / train_seconds,
                    elapsed,
                )
            )
        progress.end_epoch(None)

    def end_member_epoch(
        self,
        member: _Member,
        epoch: int,
        log: Callable[[str], None],
        on_epoch_end: EpochHook | None,
        on_member_end: MemberEndHook | None,
    ) -> None:
        """One member's end of epoch, as train_run ends one: divergence, schedule, files, hook."""
        row, d, run = member.rows[-1], member.run_dir, member.run
        log(format_row(member.name, run.train.epochs, row))
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
            write_file(d / "metrics.jsonl", write_metrics, d, member.rows)
            log(
                f"[{member.name}] diverged: non-finite loss in epoch {epoch + 1} "
                f"(train {row['train_loss']}, val {row['val_loss']}); the other members go on"
            )
            member.outcome = Outcome(RunStatus.DIVERGED, member.rows, f"non-finite loss in epoch {epoch + 1}")
            write_file(d / CHECKPOINT, member.writer.wait)  # its last "running" status lands before the end
            if on_member_end is not None:
                on_member_end(member.name, member.outcome)
            return
        member.schedule.step(row)
        write_file(d / "metrics.jsonl", write_metrics, d, member.rows)
        done = functools.partial(write_file, d / "status.json", write_status, d, RunStatus.RUNNING, epoch + 1)
        k = self.members.index(member)
        checkpoint = {
            "epoch": epoch + 1,
            "model": self.module.member_state_dict(k),
            "optimizer": self.steps.member_state_dict(k),
            "schedule": member.schedule.state_dict(),
            "scaler": member.scaler.state_dict() if member.scaler.is_enabled() else None,
            "rng": rng_state(self.rt.device),
            "rows": member.rows,
            "config": run.model_dump(mode="json"),
        }
        write_file(d / CHECKPOINT, member.writer.submit, d / CHECKPOINT, checkpoint, done)
        if on_epoch_end is not None:
            write_file(d / CHECKPOINT, member.writer.wait)
            on_epoch_end(member.name, row)

    def _train_epoch(self, progress: Progress, epoch: int) -> tuple[list[float], list[float], int]:
        rt, count = self.rt, len(self.members)
        self.module.train()
        loss_sums = torch.zeros(count, device=rt.device)
        correct = torch.zeros(count, device=rt.device, dtype=torch.int64)
        seen = steps = 0
        smoothing = self.members[0].run.train.label_smoothing
        scalers = [m.scaler for m in self.members]
        per_member = self.module.runs_per_member(rt.device)  # each member's loss as its separate run computes it
        progress.start_epoch(epoch, len(self.train_loader))
        for images, labels in self.train_loader:
            with autocast(rt):
                logits = self.forward(images)  # [N, K, classes]
            losses = member_cross_entropy(logits.float(), labels, label_smoothing=smoothing, per_member=per_member)
            if scalers[0].is_enabled():  # fp16: each member's loss scaled by its own scaler
                loss = torch.stack([scaler.scale(losses[k]) for k, scaler in enumerate(scalers)]).sum()
            else:
                loss = losses.sum()
            loss.backward()
            self.steps.step()
            for p in self.module.parameters():
                p.grad = None
            loss_sums += losses.detach()
            correct += (logits.detach().argmax(2) == labels[:, None]).sum(0)
            seen += labels.numel()
            progress.step(steps, loss_sums.mean(), correct.sum() / count, seen)
            steps += 1
        sync(rt.device)
        return (loss_sums / max(steps, 1)).tolist(), (correct.double() / max(seen, 1)).tolist(), seen

    @torch.no_grad()
    def _evaluate(self) -> tuple[list[float], list[float]]:
        """Per-member mean loss and accuracy over the test split (padded last batch as in train_run)."""
        rt, count = self.rt, len(self.members)
        self.module.eval()
        batch_size = self.members[0].run.data.batch_size
        per_member = self.module.runs_per_member(rt.device)  # each member's loss as its separate run computes it
        loss_sums = torch.zeros(count, device=rt.device, dtype=torch.float64)
        correct = torch.zeros(count, device=rt.device, dtype=torch.int64)
        total = 0
        for images, labels in self.test_loader:
            n = labels.numel()
            if rt.compile and n < batch_size:
                filler = images.new_zeros((batch_size - n, *images.shape[1:]))
                images = torch.cat([images, filler]).contiguous(memory_format=torch.channels_last)
            with autocast(rt):
                logits = self.forward(images)[:n].float()
            loss_sums += member_cross_entropy(logits, labels, reduction="sum", per_member=per_member).double()
            correct += (logits.argmax(2) == labels[:, None]).sum(0)
            total += n
        sync(rt.device)
        return (loss_sums / max(total, 1)).tolist(), (correct.double() / max(total, 1)).tolist()


def _initialize_members(module: FusedResNet18, run: RunConfig, rt: Runtime) -> None:
    """Every member starts from the weights a separate run of this seed starts from: a plain ResNet-18
    in the run's memory format re-initialised on the run's device (whose generator the init draws
    from, in memory order), loaded into each member."""
    from ..models import resnet18

    template = resnet18(width=run.model.width).to(rt.device)
    if run.model.channels_last:
        template = template.to(memory_format=torch.channels_last)
    reinitialize(template, run.seed)
    state = template.state_dict()
    for k in range(module.members):
        module.load_member(k, state)
    for p in module.parameters():
        p.grad = None
