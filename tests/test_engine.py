"""One run: schedules against torch's own schedulers, optimizers, compile once per process, divergence,
and kill-and-resume equality. Synthetic data and a 1/8-width ResNet-18 keep each run to a second or two."""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import re
import time
import warnings

import pytest
import torch
from torch.optim import lr_scheduler

from fasttrick import FusedSGDW
from fasttrick.config import ConfigError, RunConfig
from fasttrick.data import Cifar10
from fasttrick.engine import (
    CheckpointError,
    EpochSchedule,
    Interrupted,
    Session,
    build_optimizer,
    current_lr,
    lr_sequence,
    resolve_runtime,
    train_run,
)
from fasttrick.grid import expand_grid, run_grid

from engine_helpers import TINY, learnable_cifar10, quiet_session

TIMING_KEYS = {"epoch_seconds", "images_per_s", "elapsed_seconds"}


@pytest.fixture(scope="module")
def synthetic() -> Cifar10:
    return learnable_cifar10()


# ---------------------------------------------------------------------------------------------
# Schedules against torch's schedulers
# ---------------------------------------------------------------------------------------------

EPOCHS = 20
BASE_LR = 0.2


@pytest.fixture(autouse=True)
def _no_scheduler_order_warning():
    with warnings.catch_warnings():  # the references below step torch's schedulers without an optimizer step
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        yield


def torch_reference(make, warmup: int, start_factor: float, metrics=None) -> list[float]:
    """lr per epoch from torch's own classes: LinearLR for the warm-up, then a fresh ``make(optimizer)``."""
    lrs: list[float] = []
    if warmup:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
        linear = lr_scheduler.LinearLR(opt, start_factor=start_factor, total_iters=warmup)
        for _ in range(warmup):
            lrs.append(opt.param_groups[0]["lr"])
            linear.step()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    sched = make(opt)
    for epoch in range(warmup, EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        if sched is None:
            continue
        if isinstance(sched, lr_scheduler.ReduceLROnPlateau):
            sched.step(metrics[epoch]["val_acc"])
        else:
            sched.step()
    return lrs


SCHEDULES = {
    "step": ({"name": "step", "step_size": "35%", "gamma": 0.1}, lambda o: lr_scheduler.StepLR(o, 7, 0.1)),
    "multistep": (
        {"name": "multistep", "milestones": [5, "50%"], "gamma": 0.5},
        lambda o: lr_scheduler.MultiStepLR(o, [5, 10], 0.5),
    ),
    "cosine": ({"name": "cosine", "eta_min": 2e-3}, None),  # T_max = epochs after the warm-up: built per case
    "cosine_restarts": (
        {"name": "cosine_restarts", "t_0": 4, "t_mult": 2, "eta_min": 1e-3},
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2, eta_min=1e-3),
    ),
    "constant": ({"name": "constant"}, lambda o: None),
}


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("optimizer", ["fused_sgdw", "sgd"])
def test_schedule_matches_torch(name, warmup, optimizer):
    cfg, make = SCHEDULES[name]
    if name == "cosine":
        make = lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=EPOCHS - warmup, eta_min=2e-3)  # noqa: E731
    run = RunConfig.model_validate(
        {
            "train": {"epochs": EPOCHS},
            "optimizer": {"name": optimizer, "lr": BASE_LR},
            "scheduler": cfg,
            "warmup": {"epochs": warmup, "start_factor": 0.25},
        }
    )
    opt = build_optimizer(run.optimizer, [torch.nn.Parameter(torch.zeros(3))], torch.device("cpu"))
    ours = lr_sequence(opt, run)
    expected = torch_reference(make, warmup, 0.25)
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-9)
    if name != "constant":
        assert len(set(ours)) > 2  # the schedule does move


@pytest.mark.parametrize(
    "plateau",
    [
        {"mode": "max", "factor": 0.5, "patience": 1, "min_lr": 0.0},
        {"mode": "min", "factor": 0.1, "patience": 0, "min_lr": 1e-3},  # the study's deliberate mode=min on accuracy
        {"mode": "max", "factor": 0.3, "patience": 2, "cooldown": 2, "threshold": 0.01, "min_lr": 5e-3},
    ],
)
@pytest.mark.parametrize("warmup", [0, 2])
def test_plateau_matches_torch_and_warms_up_by_hand(plateau, warmup):
    accuracy = [
        0.3,
        0.5,
        0.6,
        0.6,
        0.55,
        0.61,
        0.7,
        0.7,
        0.7,
        0.72,
        0.71,
        0.8,
        0.8,
        0.8,
        0.8,
        0.8,
        0.81,
        0.79,
        0.8,
        0.8,
    ]
    metrics = [{"val_acc": a, "val_loss": 1 - a, "train_loss": 1 - a} for a in accuracy]
    run = RunConfig.model_validate(
        {
            "train": {"epochs": EPOCHS},
            "optimizer": {"name": "fused_sgdw", "lr": BASE_LR},
            "scheduler": {"name": "plateau", "monitor": "val_acc", **plateau},
            "warmup": {"epochs": warmup, "start_factor": 0.1},
        }
    )
    keys = ("mode", "factor", "patience", "cooldown", "threshold", "min_lr")
    kwargs = {k: plateau[k] for k in keys if k in plateau}
    expected = torch_reference(lambda o: lr_scheduler.ReduceLROnPlateau(o, **kwargs), warmup, 0.1, metrics)
    opt = build_optimizer(run.optimizer, [torch.nn.Parameter(torch.zeros(3))], torch.device("cpu"))
    ours = lr_sequence(opt, run, metrics)
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert min(ours) < BASE_LR * 0.5 and min(ours[warmup:]) >= plateau["min_lr"] - 1e-9


def test_plateau_counters_survive_a_state_dict_round_trip():
    run = RunConfig.model_validate(
        {"train": {"epochs": 10}, "scheduler": {"name": "plateau", "mode": "max", "patience": 3, "cooldown": 1}}
    )
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = FusedSGDW(params, lr=0.1, momentum=0.9)
    schedule = EpochSchedule(opt, run)
    for acc in (0.5, 0.6, 0.6, 0.6):
        schedule.step({"val_acc": acc})
    saved_opt, saved_schedule = opt.state_dict(), schedule.state_dict()
    assert saved_schedule["main"]["num_bad_epochs"] == 2
    opt2 = FusedSGDW([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    schedule2 = EpochSchedule(opt2, run)
    opt2.load_state_dict(saved_opt)
    schedule2.load_state_dict(saved_schedule)
    for acc in (0.6, 0.6, 0.6, 0.6):
        schedule.step({"val_acc": acc})
        schedule2.step({"val_acc": acc})
        assert current_lr(opt2) == current_lr(opt)
    assert current_lr(opt) < 0.1


# ---------------------------------------------------------------------------------------------
# Optimizers and runtime
# ---------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "fused_sgdw": (FusedSGDW, {"momentum": 0.8, "nesterov": True}),
    "sgd": (torch.optim.SGD, {"momentum": 0.8, "dampening": 0.1}),
    "adam": (torch.optim.Adam, {"betas": [0.8, 0.99], "weight_decay": 1e-4}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.05}),
    "nadam": (torch.optim.NAdam, {"momentum_decay": 5e-3}),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_from_config(name):
    cls, extra = OPTIMIZERS[name]
    cfg = RunConfig.model_validate({"optimizer": {"name": name, "lr": 0.01, **extra}}).optimizer
    param = torch.nn.Parameter(torch.ones(4))
    opt = build_optimizer(cfg, [param], torch.device("cpu"))
    assert type(opt) is cls
    group = opt.param_groups[0]
    for key, value in extra.items():
        assert group[key] == (tuple(value) if isinstance(value, list) else value)
    param.grad = torch.ones(4)
    opt.step()
    assert torch.all(param < 1)


def test_runtime_defaults_on_cpu():
    rt = resolve_runtime(RunConfig())
    if not torch.cuda.is_available():
        assert (rt.device.type, rt.amp_dtype, rt.compile) == ("cpu", None, False)  # fp32, eager on CPU
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_runtime(RunConfig.model_validate({"train": {"device": "cuda"}}))
    else:
        assert (rt.device.type, rt.amp_dtype, rt.compile) == ("cuda", torch.bfloat16, True)
    fp16 = resolve_runtime(RunConfig.model_validate({"train": {"device": "cpu", "precision": "fp16", "compile": True}}))
    assert (fp16.amp_dtype, fp16.compile) == (torch.float16, True)


# ---------------------------------------------------------------------------------------------
# Runs: compile once, divergence, resume
# ---------------------------------------------------------------------------------------------


def test_compiled_once_and_reused_by_every_run(synthetic, tmp_path):
    from torch._dynamo.utils import counters

    base = {**TINY, "train": {**TINY["train"], "epochs": 1, "compile": True, "compile_backend": "aot_eager"}}
    grid = expand_grid({"base": base, "seeds": [0, 1, 2]})
    ends: list[float] = []
    starts: list[float] = []
    graphs: list[int] = []

    def hook(name, row):
        now = time.perf_counter()
        ends.append(now)
        starts.append(now - row["epoch_seconds"])
        graphs.append(counters["stats"]["unique_graphs"])

    session = quiet_session(synthetic)
    before = counters["stats"]["unique_graphs"]
    statuses = run_grid(grid, tmp_path, session=session, on_epoch_end=hook, summary=False)
    assert list(statuses.values()) == ["finished"] * 3
    assert graphs[0] > before  # the first run did compile (train and eval graphs) ...
    assert graphs[1] == graphs[0] and graphs[2] == graphs[0]  # ... and no later run compiled anything
    assert len(session._models) == 1
    # The next run trains within 5 s of the previous one ending (no recompile, data already loaded).
    assert max(s - e for e, s in zip(ends, starts[1:], strict=False)) < 5.0
    # Different seeds, different weights: each run re-initialised the one module from its own seed.
    accs = {json.loads((tmp_path / f"seed{s}" / "metrics.jsonl").read_text())["train_loss"] for s in range(3)}
    assert len(accs) == 3


def test_diverged_run_is_recorded_and_the_grid_goes_on(synthetic, tmp_path):
    grid = expand_grid(
        {
            "base": {**TINY, "train": {**TINY["train"], "epochs": 1}},
            "runs": [
                {"name": "boom", "optimizer": {"lr": 1e30}},  # weights reach inf within a step or two
                {"name": "fine"},
            ],
        }
    )
    statuses = run_grid(grid, tmp_path, session=quiet_session(synthetic))
    assert statuses == {"boom-seed0": "diverged", "fine-seed0": "finished"}
    status = json.loads((tmp_path / "boom-seed0" / "status.json").read_text())
    assert status["status"] == "diverged" and "non-finite" in status["message"]
    assert json.loads((tmp_path / "boom-seed0" / "result.json").read_text())["status"] == "diverged"
    assert json.loads((tmp_path / "fine-seed0" / "result.json").read_text())["status"] == "finished"
    assert "diverged" in (tmp_path / "summary.md").read_text()
    # A rerun leaves the diverged run alone (a terminal state), as it does finished ones.
    lines: list[str] = []
    assert run_grid(grid, tmp_path, session=quiet_session(synthetic, lines)) == statuses
    assert sum("skipped" in line for line in lines) == 2


def test_killed_and_resumed_run_ends_as_an_uninterrupted_one(synthetic, tmp_path):
    config = {
        **TINY,
        "train": {**TINY["train"], "epochs": 3, "deterministic": True},
        # Plateau with patience 0 and an absolute threshold of 1.0 on an accuracy: no epoch after the first can
        # improve on it, whatever a torch version's accuracies are, so the lr halves at the end of epochs 2 and 3.
        # The cut after epoch 2 needs epoch 1's best to survive the kill (a fresh scheduler would count it better).
        "scheduler": {
            "name": "plateau",
            "mode": "max",
            "monitor": "val_acc",
            "patience": 0,
            "factor": 0.5,
            "threshold": 1.0,
            "threshold_mode": "abs",
        },
    }
    grid = expand_grid({"base": config})
    whole = run_grid(grid, tmp_path / "whole", session=quiet_session(synthetic), summary=False)
    assert whole == {"seed0": "finished"}

    def kill_after_first_epoch(name, row):
        if row["epoch"] == 1:
            raise Interrupted("simulated kill")

    with pytest.raises(Interrupted):
        run_grid(grid, tmp_path / "killed", session=quiet_session(synthetic), on_epoch_end=kill_after_first_epoch)
    killed_dir = tmp_path / "killed" / "seed0"
    assert json.loads((killed_dir / "status.json").read_text())["status"] == "interrupted"
    assert len((killed_dir / "metrics.jsonl").read_text().splitlines()) == 1

    lines: list[str] = []
    resumed = run_grid(grid, tmp_path / "killed", session=quiet_session(synthetic, lines), summary=False)
    assert resumed == {"seed0": "finished"}
    assert any("resuming after epoch 1" in line for line in lines)

    def rows(folder):
        return [json.loads(line) for line in (folder / "seed0" / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(tmp_path / "whole"), rows(tmp_path / "killed")
    assert len(a) == len(b) == 3
    for row_a, row_b in zip(a, b, strict=True):
        assert {k: v for k, v in row_a.items() if k not in TIMING_KEYS} == {
            k: v for k, v in row_b.items() if k not in TIMING_KEYS
        }
    assert [r["lr"] for r in b] == [0.05, 0.05, 0.025]  # the cut after epoch 2 used the best from before the kill
    assert b[2]["elapsed_seconds"] > b[1]["elapsed_seconds"] > b[0]["elapsed_seconds"]  # cumulative across the kill
    ckpt_a = torch.load(tmp_path / "whole" / "seed0" / "checkpoint.pt", weights_only=False)
    ckpt_b = torch.load(killed_dir / "checkpoint.pt", weights_only=False)
    for key, tensor in ckpt_a["model"].items():
        assert torch.equal(tensor, ckpt_b["model"][key]), key
    assert ckpt_a["schedule"] == ckpt_b["schedule"]


def test_progress_bar_on_a_terminal_plain_lines_otherwise(synthetic, tmp_path, capsys):
    grid = expand_grid(
        {"base": {**TINY, "data": {"batch_size": 32, "train_subset": 704}, "train": {**TINY["train"], "epochs": 1}}}
    )
    lines: list[str] = []
    run_grid(grid, tmp_path / "bar", session=Session(log=lines.append, bar=True, dataset=synthetic), summary=False)
    bar = capsys.readouterr().err
    assert "seed0 1/1" in bar and "loss=" in bar and "acc=" in bar and "img_s=" in bar  # 22 steps: postfix at 20
    assert any(line.startswith("[seed0] epoch 1/1  train_loss") and "img/s" in line for line in lines)
    lines.clear()
    run_grid(grid, tmp_path / "plain", session=Session(log=lines.append, bar=False, dataset=synthetic), summary=False)
    assert "loss=" not in capsys.readouterr().err
    assert any(line.startswith("[seed0] epoch 1/1  train_loss") for line in lines)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_precisions_train_and_checkpoint_the_scaler(synthetic, tmp_path, precision):
    base = {**TINY, "data": {"batch_size": 64, "train_subset": 256, "test_subset": 128}}
    base["train"] = {**TINY["train"], "epochs": 1, "precision": precision}
    statuses = run_grid(expand_grid({"base": base}), tmp_path, session=quiet_session(synthetic), summary=False)
    assert statuses == {"seed0": "finished"}
    checkpoint = torch.load(tmp_path / "seed0" / "checkpoint.pt", weights_only=False)
    if precision == "fp16":  # GradScaler on: its scale and growth tracker are in the checkpoint
        assert checkpoint["scaler"] is not None and checkpoint["scaler"]["scale"] > 0
    else:
        assert checkpoint["scaler"] is None
    assert json.loads((tmp_path / "seed0" / "environment.json").read_text())["precision"] == precision


# ---------------------------------------------------------------------------------------------
# Checkpoints: nothing in one runs code; only its own config resumes from it; a bad one is named
# ---------------------------------------------------------------------------------------------


class Payload:
    """Pickles as a call of os.mkdir(marker): a loader that runs code leaves the marker behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


ONE_EPOCH = {**TINY, "train": {**TINY["train"], "epochs": 1}}


@pytest.fixture(scope="module")
def finished_runs(synthetic, tmp_path_factory):
    """One-epoch runs (fused_sgdw lr 0.05 and adamw), their checkpoints to copy into other run folders."""
    out = tmp_path_factory.mktemp("finished")
    grid = expand_grid(
        {"base": ONE_EPOCH, "runs": [{"name": "sgd"}, {"name": "adamw", "optimizer": {"name": "adamw"}}]}
    )
    assert set(run_grid(grid, out, session=quiet_session(synthetic), summary=False).values()) == {"finished"}
    return out


def plant(run_dir, data: bytes):
    """A checkpoint planted in a run folder of a grid folder (its lock file marks it one)."""
    run_dir.mkdir(parents=True)
    (run_dir.parent / ".fasttrick-grid.lock").touch()
    (run_dir / "checkpoint.pt").write_bytes(data)


def test_a_planted_checkpoint_payload_is_refused_unrun(synthetic, finished_runs, tmp_path):
    state = torch.load(finished_runs / "sgd-seed0" / "checkpoint.pt", weights_only=True)
    state["rows"].append(Payload(tmp_path / "ran"))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    plant(tmp_path / "out" / "sgd-seed0", buffer.getvalue())
    grid = expand_grid({"base": ONE_EPOCH, "runs": [{"name": "sgd"}]})
    with pytest.raises(ConfigError) as err:
        run_grid(grid, tmp_path / "out", session=quiet_session(synthetic), summary=False)
    assert not (tmp_path / "ran").exists()
    assert f"checkpoint {tmp_path / 'out' / 'sgd-seed0' / 'checkpoint.pt'} holds objects other than tensors" in str(
        err.value
    )
    with pytest.raises(CheckpointError, match="refused unread"):  # the engine's own load refuses it too
        train_run(grid.runs[0].config, tmp_path / "out" / "sgd-seed0", quiet_session(synthetic))
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "source, target, difference",
    [
        ("sgd-seed0", {"base": {"optimizer": {**TINY["optimizer"], "lr": 0.1}}}, "optimizer.lr: 0.05 -> 0.1"),
        ("sgd-seed0", {"seeds": [7]}, "seed: 0 -> 7"),
        ("adamw-seed0", {}, "optimizer.name: 'adamw' -> 'fused_sgdw'"),  # not KeyError: 'momentum'
    ],
)
def test_a_checkpoint_resumes_only_the_config_it_records(
    synthetic, finished_runs, tmp_path, source, target, difference
):
    grid = expand_grid({"base": {**ONE_EPOCH, **target.get("base", {})}, "seeds": target.get("seeds", [0])})
    (run,) = grid.runs
    path = tmp_path / "out" / run.name / "checkpoint.pt"
    plant(path.parent, (finished_runs / source / "checkpoint.pt").read_bytes())
    with pytest.raises(ConfigError) as err:
        run_grid(grid, tmp_path / "out", session=quiet_session(synthetic), summary=False)
    assert f"checkpoint {path} was written by another config ({difference})" in str(err.value)
    assert not (path.parent / "metrics.jsonl").exists()  # refused before anything trained
    with pytest.raises(CheckpointError, match=re.escape(difference)):
        train_run(run.config, path.parent, quiet_session(synthetic))


def test_a_truncated_checkpoint_is_named(synthetic, finished_runs, tmp_path):
    data = (finished_runs / "sgd-seed0" / "checkpoint.pt").read_bytes()
    plant(tmp_path / "out" / "sgd-seed0", data[: len(data) // 2])
    grid = expand_grid({"base": ONE_EPOCH, "runs": [{"name": "sgd"}]})
    with pytest.raises(
        ConfigError, match=re.escape(f"checkpoint {tmp_path / 'out' / 'sgd-seed0' / 'checkpoint.pt'} is damaged")
    ):
        run_grid(grid, tmp_path / "out", session=quiet_session(synthetic), summary=False)


def test_checkpoints_hold_only_what_weights_only_loading_admits(finished_runs):
    for run in ("sgd-seed0", "adamw-seed0"):
        state = torch.load(finished_runs / run / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == 1 and state["config"]["optimizer"]["name"] in ("fused_sgdw", "adamw")


# ---------------------------------------------------------------------------------------------
# A write that fails (disk full, I/O error) interrupts the run, and a rerun resumes it
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, file, error",
    [
        ("fasttrick.engine.io.save_torch", "checkpoint.pt", errno.ENOSPC),  # the background checkpoint writer
        ("fasttrick.engine.run.write_metrics", "metrics.jsonl", errno.EIO),
    ],
)
def test_a_failed_write_interrupts_the_run_and_a_rerun_resumes_it(
    synthetic, tmp_path, monkeypatch, target, file, error
):
    config = {**TINY, "train": {**TINY["train"], "deterministic": True}}
    grid = expand_grid({"base": config})
    assert run_grid(grid, tmp_path / "whole", session=quiet_session(synthetic), summary=False) == {"seed0": "finished"}

    module, name = target.rsplit(".", 1)
    real = getattr(importlib.import_module(module), name)
    calls = []

    def fails_in_epoch_2(*args):
        calls.append(args)
        if len(calls) == 3:  # metrics: 0 rows, epoch 1, epoch 2; checkpoint: epoch 1, epoch 2 (+1 spare)
            raise OSError(error, os.strerror(error))
        return real(*args)

    if file == "checkpoint.pt":
        calls.append(None)  # the checkpoint writer is first called after epoch 1
    monkeypatch.setattr(target, fails_in_epoch_2)
    lines: list[str] = []
    out = tmp_path / "out"
    assert run_grid(grid, out, session=quiet_session(synthetic, lines), summary=False) == {"seed0": "interrupted"}
    state = json.loads((out / "seed0" / "status.json").read_text())
    assert state["status"] == "interrupted" and state["epoch"] == 1
    assert f"cannot write {out / 'seed0' / file}: {os.strerror(error)} ({errno.errorcode[error]})" in state["message"]
    monkeypatch.undo()

    lines.clear()
    assert run_grid(grid, out, session=quiet_session(synthetic, lines), summary=False) == {"seed0": "finished"}
    assert "[seed0] resuming after epoch 1" in "\n".join(lines)

    def rows(folder):
        return [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (folder / "seed0" / "metrics.jsonl").read_text().splitlines()
        ]

    assert rows(out) == rows(tmp_path / "whole")
