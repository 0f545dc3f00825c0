"""--sweep KEY=V1,V2: grid axes from the command line. They multiply with each other and with the file's axes
(Hydra's multirun), are validated as a grid file's are, show in --dry-run, and the runs they make train."""

from __future__ import annotations

import json

import pytest
import yaml

from fasttrick import train
from fasttrick.config import ConfigError
from fasttrick.grid import expand_grid, run_grid
from fasttrick.grid.expand import parse_sweeps

from engine_helpers import TINY, learnable_cifar10, quiet_session

FILE = {"name": "s", "base": TINY, "grid": {"optimizer.momentum": [0.5, 0.9]}}


def test_parse_sweeps_reads_each_value_as_yaml():
    assert parse_sweeps(["optimizer.lr=0.05,0.1,0.2", "model.width=0.125"]) == {
        "optimizer.lr": [0.05, 0.1, 0.2],
        "model.width": [0.125],
    }
    assert parse_sweeps(["optimizer.betas=[0.9,0.99],[0.8,0.9]"]) == {"optimizer.betas": [[0.9, 0.99], [0.8, 0.9]]}
    assert parse_sweeps(["scheduler.name=cosine,constant"]) == {"scheduler.name": ["cosine", "constant"]}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["optimizer.lr"], "--sweep 'optimizer.lr': expected key=value"),
        (["=0.1"], "expected key=value with a dotted key"),
        (["optimizer.lr=[0.1"], "value is not YAML"),
        (["optimizer.lr=0.1", "optimizer.lr=0.2"], "given twice"),
    ],
)
def test_parse_sweeps_refuses(items, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        parse_sweeps(items)


def test_sweeps_multiply_with_each_other_and_the_files_axes():
    grid = expand_grid(FILE, sweeps=["optimizer.lr=0.05,0.1,0.2", "optimizer.weight_decay=0,5e-4"])
    assert len(grid.runs) == 2 * 3 * 2
    combos = {(r.config.optimizer.momentum, r.config.optimizer.lr, r.config.optimizer.weight_decay) for r in grid.runs}
    assert combos == {(m, lr, wd) for m in (0.5, 0.9) for lr in (0.05, 0.1, 0.2) for wd in (0.0, 5e-4)}
    assert grid.runs[0].name == "m0.5-lr0.05-wd0-seed0"
    assert grid.document()["sweeps"] == ["optimizer.lr=0.05,0.1,0.2", "optimizer.weight_decay=0,5e-4"]


def test_a_sweep_replaces_the_files_axis_of_its_key_and_seed_its_seeds():
    grid = expand_grid(FILE, sweeps=["optimizer.momentum=0.0,0.8,0.95", "seed=3,4"])
    assert sorted({r.config.optimizer.momentum for r in grid.runs}) == [0.0, 0.8, 0.95]
    assert sorted({r.config.seed for r in grid.runs}) == [3, 4] and len(grid.runs) == 6
    assert all(r.name.endswith(f"-seed{r.config.seed}") for r in grid.runs)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("optimizer.lr=0.1,-1", "optimizer.lr: Input should be greater than 0"),
        ("optimizer.lrr=0.1,0.2", "optimizer.lrr: unknown key"),
        ("optimizer.lr=", "axis 'optimizer.lr' has no values"),
    ],
)
def test_a_sweep_is_validated_as_a_grid_file_is(sweep, message):
    with pytest.raises(ConfigError, match=message):
        expand_grid(FILE, sweeps=[sweep])


def test_sweep_on_the_command_line_dry_run(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump(FILE))
    out = tmp_path / "o"
    argv = ["--config", str(config), "--out", str(out), "--dry-run"]
    assert train.main([*argv, "--sweep", "optimizer.lr=0.05,0.1", "--sweep", "data.batch_size=64,128"]) == 0
    printed = capsys.readouterr().out
    assert "8 runs, 8 selected" in printed and "m0.9-lr0.1-bs128-seed0" in printed
    assert not out.exists()  # a dry run writes nothing
    assert train.main([*argv, "--sweep", "optimizer.lr=0,0.1"]) == 2
    assert "optimizer.lr: Input should be greater than 0" in capsys.readouterr().err


def test_swept_runs_train(tmp_path):
    base = {**TINY, "train": {**TINY["train"], "epochs": 1}}
    grid = expand_grid({"name": "s", "base": base}, sweeps=["optimizer.lr=0.01,0.05"])
    statuses = run_grid(grid, tmp_path, session=quiet_session(learnable_cifar10()), fuse="off")
    assert statuses == {"lr0.01-seed0": "finished", "lr0.05-seed0": "finished"}
    for name, lr in (("lr0.01-seed0", 0.01), ("lr0.05-seed0", 0.05)):
        row = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
        assert row["lr"] == pytest.approx(lr)
    assert yaml.safe_load((tmp_path / "grid.yaml").read_text())["sweeps"] == ["optimizer.lr=0.01,0.05"]
