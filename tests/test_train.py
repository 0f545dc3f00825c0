"""`python -m fasttrick.train` end to end on real CIFAR-10 (FASTTRICK_DATA; a subset, 1/8 width), through
main(): the smoke grid, its run folders, summary and plots; rerun skips; --only/--fresh; a changed config.

The JPEGs are decoded once into a cache shared by this module (skipped with a reason without FASTTRICK_DATA).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from fasttrick.train import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
# The smoke grid made smaller still: 3 runs x 2 epochs x 1 024 images, on the CPU even where a GPU is present
# (the smoke config's `device: auto` would train on CUDA there, compiled, while these tests check a CPU run).
SMALLER = [
    "--set",
    "train.device=cpu",
    "--epochs",
    "2",
    "--set",
    "data.train_subset=1024",
    "--set",
    "data.test_subset=512",
    "--set",
    "model.width=0.125",
]
ROW_KEYS = {
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "images_per_s",
    "elapsed_seconds",
}


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    if not os.environ.get("FASTTRICK_DATA"):
        pytest.skip("FASTTRICK_DATA is unset: point it at a CIFAR-10 archive or folder (see docs/running.md)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTTRICK_CACHE", str(tmp_path_factory.mktemp("fasttrick-cache")))
        yield


@pytest.fixture(scope="module")
def smoke_out(real_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "out"
    assert main(["--config", str(SMOKE), "--out", str(out), "--no-bar", *SMALLER]) == 0
    return out


def run_dirs(out: Path) -> list[Path]:
    return sorted(d for d in out.iterdir() if d.is_dir() and d.name != "plots")


def test_smoke_grid_writes_every_file(smoke_out):
    grid = yaml.safe_load((smoke_out / "grid.yaml").read_text())
    names = [r["name"] for r in grid["runs"]]
    assert names == ["fused_sgdw-step-seed0", "adamw-cosine-warmup-seed0", "sgd-plateau-max-seed0"]
    assert [d.name for d in run_dirs(smoke_out)] == sorted(names)
    for entry in grid["runs"]:
        folder = smoke_out / entry["name"]
        assert yaml.safe_load((folder / "config.yaml").read_text()) == entry["config"]
        assert entry["config"]["train"]["epochs"] == 2 and entry["config"]["data"]["train_subset"] == 1024
        assert json.loads((folder / "status.json").read_text()) == {"status": "finished", "epoch": 2, "message": None}
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
        for row in rows:
            assert set(row) == ROW_KEYS
            assert 0 <= row["train_acc"] <= 1 and 0 <= row["val_acc"] <= 1 and row["val_loss"] > 0
            assert row["images_per_s"] > 0 and row["epoch_seconds"] > 0
        assert rows[1]["elapsed_seconds"] >= rows[0]["epoch_seconds"] + rows[1]["epoch_seconds"] - 1e-3
        csv_lines = (folder / "metrics.csv").read_text().splitlines()
        assert csv_lines[0].split(",") == list(rows[0]) and len(csv_lines) == 3
        result = json.loads((folder / "result.json").read_text())
        assert result["status"] == "finished" and result["best_val_acc"] == max(r["val_acc"] for r in rows)
        env = json.loads((folder / "environment.json").read_text())
        assert env["device"] == "cpu" and env["precision"] == "fp32" and env["torch"] and "git_commit" in env
        assert (folder / "checkpoint.pt").stat().st_size > 0
    step_rows = [json.loads(x) for x in (smoke_out / names[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in step_rows] == [0.1, 0.01]  # StepLR every 35% of 2 epochs = every epoch
    warm_rows = [json.loads(x) for x in (smoke_out / names[1] / "metrics.jsonl").read_text().splitlines()]
    assert warm_rows[0]["lr"] == pytest.approx(2e-4) and warm_rows[1]["lr"] == pytest.approx(2e-3)  # warm-up
    summary = (smoke_out / "summary.md").read_text()
    assert all(name in summary for name in names)
    assert len((smoke_out / "summary.csv").read_text().splitlines()) == 4
    for plot in ("val_acc", "train_loss", "lr"):
        assert (smoke_out / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(smoke_out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_rerun_skips_finished_runs_and_a_changed_config_is_refused(smoke_out, capsys):
    before = {d.name: (d / "metrics.jsonl").read_bytes() for d in run_dirs(smoke_out)}
    assert main(["--config", str(SMOKE), "--out", str(smoke_out), "--no-bar", *SMALLER]) == 0
    assert capsys.readouterr().out.count("already, skipped") == 3
    assert {d.name: (d / "metrics.jsonl").read_bytes() for d in run_dirs(smoke_out)} == before

    changed = [*SMALLER[2:], "--epochs", "3"]
    assert main(["--config", str(SMOKE), "--out", str(smoke_out), "--no-bar", *changed]) == 2
    err = capsys.readouterr().err
    assert "holds a different config (train.epochs: 2 -> 3)" in err and "--fresh" in err
    assert {d.name: (d / "metrics.jsonl").read_bytes() for d in run_dirs(smoke_out)} == before


def test_only_and_fresh_restart_just_the_selected_run(smoke_out, capsys):
    before = {d.name: (d / "metrics.jsonl").read_bytes() for d in run_dirs(smoke_out)}
    argv = ["--config", str(SMOKE), "--out", str(smoke_out), "--no-bar", *SMALLER, "--only", "sgd-plateau*", "--fresh"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/1] sgd-plateau-max-seed0" in out and "epoch 2/2" in out
    after = {d.name: (d / "metrics.jsonl").read_bytes() for d in run_dirs(smoke_out)}
    assert after["fused_sgdw-step-seed0"] == before["fused_sgdw-step-seed0"]
    assert after["adamw-cosine-warmup-seed0"] == before["adamw-cosine-warmup-seed0"]
    assert json.loads((smoke_out / "sgd-plateau-max-seed0" / "status.json").read_text())["status"] == "finished"


def test_missing_data_stops_the_grid_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTTRICK_DATA", str(tmp_path / "no-such-cifar"))
    monkeypatch.setenv("FASTTRICK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["--config", str(SMOKE), "--out", str(out), "--no-bar"]) == 1
    assert "no CIFAR-10" in capsys.readouterr().err
    states = {d.name: json.loads((d / "status.json").read_text())["status"] for d in run_dirs(out)}
    assert states == {  # not the run's own failure: a rerun, once the data is there, resumes it
        "fused_sgdw-step-seed0": "interrupted",
        "adamw-cosine-warmup-seed0": "pending",
        "sgd-plateau-max-seed0": "pending",
    }
