"""Progress people expect: the run's ETA in every plain epoch line (from measured epoch times), the grid's ETA
between runs, the console's wall time equal to summary.md's, and closing lines that say where to look."""

from __future__ import annotations

import json

import pytest
import torch

from fasttrick import train
from fasttrick.engine import progress as progress_module
from fasttrick.engine.progress import Progress
from fasttrick.grid import estimate, expand_grid, run_grid
from fasttrick.runfiles import RunStatus, format_duration

from engine_helpers import TINY, learnable_cifar10, quiet_session


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (0.04, "0.0 s"), (42.14, "42.1 s"), (185, "3m 05s"), (3725, "1h 02m")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_the_run_eta_is_the_epochs_left_at_the_measured_epoch_time(monkeypatch):
    clock = iter([0.0, 10.0, 10.0, 30.0, 30.0, 45.0])  # epochs of 10 s, 20 s, 15 s
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    lines: list[str] = []
    p = Progress("r", 3, lines.append, bar=False)
    row = {k: 0.5 for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "epoch_seconds")}
    for epoch in (1, 2, 3):
        p.start_epoch(epoch, steps=4)
        p.step(0, torch.tensor(1.0), torch.tensor(1), 1)
        p.end_epoch({**row, "epoch": epoch})
    assert [line.rsplit("  ETA ", 1)[1] for line in lines] == ["20.0 s", "15.0 s", "0.0 s"]  # 2x10, 1x15, 0
    assert lines[0].startswith("[r] epoch 1/3  train_loss 0.5000")


def test_a_grid_logs_its_eta_and_the_summarys_wall_time(tmp_path):
    grid = expand_grid(
        {"base": {**TINY, "train": {**TINY["train"], "epochs": 1}}, "grid": {"optimizer.lr": [0.01, 0.02, 0.05]}}
    )
    lines: list[str] = []
    assert set(run_grid(grid, tmp_path, session=quiet_session(learnable_cifar10(), lines)).values()) == {"finished"}
    epoch_lines = [line for line in lines if " epoch 1/1 " in line]
    assert ["grid ETA" in line for line in epoch_lines] == [True, True, False]  # nothing after the last run
    etas = [line for line in lines if line.startswith("grid ETA ")]
    assert len(etas) == 2 and "(2 left at " in etas[0] and "(1 left at " in etas[1]
    for index, run in enumerate(grid.runs, start=1):
        wall = json.loads((tmp_path / run.name / "result.json").read_text())["wall_seconds"]
        ended = next(line for line in lines if line.startswith(f"[{index}/3] {run.name}: finished"))
        assert f": wall time {format_duration(wall)} (as in summary.md)" in ended
        summary_row = next(r for r in (tmp_path / "summary.md").read_text().splitlines() if f" {run.name} " in r)
        assert f"| {format_duration(wall)} |" in summary_row


def test_the_closing_lines_name_the_summary_plots_and_report(tmp_path, capsys):
    assert train._report_statuses({"a": RunStatus.FINISHED}, tmp_path) == 0
    assert "summary:" not in capsys.readouterr().out  # no summary written: nothing to point at
    (tmp_path / "summary.md").write_text("# s\n")
    assert train._report_statuses({"a": RunStatus.FINISHED, "b": RunStatus.FAILED}, tmp_path) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "done: 1 failed, 1 finished"
    assert out[1] == f"summary: {tmp_path / 'summary.md'}  plots: {tmp_path / 'plots'}/"
    assert out[2] == f"report (with the study's claims): python -m fasttrick.report {tmp_path}"


def test_the_cpu_estimate_reproduces_its_calibration_and_scales():
    smoke = expand_grid(
        {
            "base": {
                "data": {"train_subset": 4096, "test_subset": 1024},
                "model": {"width": 0.125},
                "optimizer": {"name": "sgd"},
            },
            "runs": [{"name": n} for n in "abc"],
        },
        epochs=3,
        device="cpu",
    )
    assert 34 <= estimate.cpu_seconds(smoke.runs, {}) <= 44  # the smoke grid's measured 34-44 s
    assert estimate.cpu_seconds(smoke.runs, {"a-seed0": 3, "b-seed0": 1}) == pytest.approx(
        estimate.cpu_seconds(smoke.runs, {}) * 5 / 9
    )
    on_gpu = expand_grid({"base": {"optimizer": {"name": "sgd"}}}, device="cuda")
    assert estimate.cpu_seconds(on_gpu.runs, {}) == 0


def test_a_long_cpu_study_says_so_with_how_to_scale_it_down(tmp_path, capsys):
    study = expand_grid(
        {"base": {"model": {"width": 1.0}, "optimizer": {"name": "sgd"}}, "grid": {"optimizer.lr": [0.1, 0.2]}},
        device="cpu",
    )
    lines: list[str] = []
    seconds = estimate.warn_if_long(study.runs, {}, lines.append)
    assert seconds == pytest.approx(2 * 30 * (50_000 + 10_000 / 3) * 1e-3 * 64)  # 2 runs x 30 epochs at width 1
    assert len(lines) == 1 and lines[0].startswith(
        f"estimate: the 2 run(s) would take about {format_duration(seconds)}"
    )
    for hint in ("--epochs N", "data.train_subset", "model.width", "calibrated"):
        assert hint in lines[0]
    assert estimate.warn_if_long(study.runs[:1], {study.runs[0].name: 30}, lines.append) == 0 and len(lines) == 1
    config = tmp_path / "big.yaml"
    config.write_text("base: {model: {width: 1.0}, train: {device: cpu}, optimizer: {name: sgd}}\n")
    assert train.main(["--config", str(config), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    assert "estimate: the 1 run(s) would take about" in capsys.readouterr().out


@pytest.mark.parametrize(("mean", "grid_eta"), [(None, "1m 20s"), (100.0, "3m 40s")])
def test_the_grid_eta_adds_the_runs_after_this_one(monkeypatch, mean, grid_eta):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    lines: list[str] = []
    p = Progress("r", 3, lines.append, bar=False, units_after=(2, mean))
    p.start_epoch(1, steps=4)
    p.end_epoch(None)  # an array's epoch: its line carries the ETAs
    # run: 2 epochs x 10 s left; grid: + 2 runs, each 3 x 10 s as measured here (None) or the mean of runs ended
    assert lines == [f"[r] epoch 1/3  ETA 20.0 s  grid ETA {grid_eta}"]
