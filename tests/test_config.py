"""Config schema, grid expansion, and every bad-config case through the CLI (exit 2, nothing written).

No training here: everything runs in well under a second.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import get_args

import pytest

from fasttrick.config import ConfigError, RunConfig, config_warnings, load_yaml, resolve_epochs
from fasttrick.grid import expand_grid, load_grid
from fasttrick.train import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STUDY_CONFIGS = ["lr_momentum", "schedules", "l2", "group1", "group2", "group3"]


def test_yaml_reads_exponent_floats_as_floats():
    data = load_yaml("a: 1e-3\nb: 5E-4\nc: -2e+2\nd: 1.0e-3\ne: '1e-3'\nf: 3\ng: 35%")
    assert data == {"a": 0.001, "b": 0.0005, "c": -200.0, "d": 0.001, "e": "1e-3", "f": 3, "g": "35%"}
    assert isinstance(data["f"], int)


def test_epoch_shares_scale_with_the_run():
    assert resolve_epochs("35%", 200) == 70  # the post's "every 70 epochs"
    assert resolve_epochs("35%", 30) == 11  # half up
    assert resolve_epochs("5%", 20, minimum=0) == 1
    assert resolve_epochs(7, 30) == 7
    assert resolve_epochs("1%", 10, minimum=1) == 1


@pytest.mark.parametrize("name", [*STUDY_CONFIGS, "smoke"])
@pytest.mark.parametrize("profile", ["quick", "faithful"])
def test_shipped_configs_expand_and_validate(name, profile):
    grid = load_grid(CONFIGS / f"{name}.yaml", profile=profile)
    assert grid.runs, name
    names = [r.name for r in grid.runs]
    assert len(set(names)) == len(names)
    assert all(n.endswith("-seed0") for n in names)
    for run in grid.runs:
        if name == "smoke":
            assert run.config.train.epochs <= 3 and run.config.model.width < 1
        elif profile == "quick":
            assert run.config.train.epochs <= 30
        else:
            assert run.config.train.epochs == 200
            assert run.config.model.width == 1.0 and run.config.data.train_subset is None


def test_study_shapes():
    assert len(load_grid(CONFIGS / "lr_momentum.yaml").runs) == 4
    group1 = load_grid(CONFIGS / "group1.yaml", profile="faithful")
    assert {r.config.optimizer.name for r in group1.runs} == {"fused_sgdw", "adam", "adamw"}
    assert {resolve_epochs(r.config.scheduler.step_size, 200) for r in group1.runs} == {70}
    group2 = load_grid(CONFIGS / "group2.yaml")
    plateaus = [r.config.scheduler for r in group2.runs if r.config.scheduler.name == "plateau"]
    assert {p.mode for p in plateaus} == {"min", "max"}
    assert any(p.mode == "max" and p.min_lr > 0 for p in plateaus)
    assert any(r.config.scheduler.name == "cosine" for r in group2.runs)
    assert any("plateau mode 'min'" in w for w in group2.warnings)  # warned, not refused
    group3 = load_grid(CONFIGS / "group3.yaml")
    assert any(r.config.optimizer.name == "nadam" for r in group3.runs)
    assert any(r.config.optimizer.name == "adam" and r.config.scheduler.name == "cosine" for r in group3.runs)
    decays = [r.config.optimizer.weight_decay for r in load_grid(CONFIGS / "l2.yaml").runs]
    assert min(decays) == 0 and max(decays) >= 1e-2


def test_expansion_layers_names_and_block_replacement():
    grid = expand_grid(
        {
            "seeds": [0, 1],
            "base": {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "train": {"epochs": 5}},
            "runs": [{"name": "base"}, {"optimizer": {"name": "adam", "lr": 1e-3}}],
            "grid": {"optimizer.weight_decay": [0, 5e-4]},
        },
        overrides=["train.epochs=4", "warmup.epochs=1"],
    )
    names = [r.name for r in grid.runs]
    assert names == [
        "base-wd0-seed0",
        "base-wd0-seed1",
        "base-wd0.0005-seed0",
        "base-wd0.0005-seed1",
        "adam-lr0.001-wd0-seed0",
        "adam-lr0.001-wd0-seed1",
        "adam-lr0.001-wd0.0005-seed0",
        "adam-lr0.001-wd0.0005-seed1",
    ]
    by_name = {r.name: r.config for r in grid.runs}
    adam = by_name["adam-lr0.001-wd0.0005-seed1"]
    assert adam.optimizer.name == "adam" and adam.optimizer.weight_decay == 5e-4  # momentum did not leak in
    assert adam.seed == 1 and adam.train.epochs == 4 and adam.warmup.epochs == 1  # --set wins over base
    assert by_name["base-wd0-seed0"].optimizer.momentum == 0.9
    assert [r.name for r in grid.select(["adam-*-seed0"])] == [
        n for n in names if n.startswith("adam") and n.endswith("0")
    ]


def test_plateau_min_on_accuracy_is_a_warning():
    run = RunConfig.model_validate({"scheduler": {"name": "plateau", "mode": "min", "monitor": "val_acc"}})
    assert any("improves" in note for note in config_warnings(run))
    assert (
        config_warnings(
            RunConfig.model_validate({"scheduler": {"name": "plateau", "mode": "min", "monitor": "val_loss"}})
        )
        == []
    )


def test_duplicate_run_names_are_refused():
    with pytest.raises(ConfigError, match="distinct"):
        expand_grid({"runs": [{"name": "a"}, {"name": "a", "optimizer": {"lr": 0.2}}]})


GOOD = """\
base:
  train: {epochs: 2, device: cpu}
  optimizer: {name: fused_sgdw, lr: 0.1, momentum: 0.9}
runs:
  - {name: one}
  - {name: two, scheduler: {name: cosine}}
"""

BAD_CASES = {
    # case: (config text, --set args, what the message must name)
    "unknown key": (
        GOOD.replace("momentum: 0.9", "momentun: 0.9"),
        [],
        ["optimizer.momentun", "did you mean 'momentum'", "every run"],
    ),
    "typo'd optimizer": (GOOD.replace("fused_sgdw", "fused_sgd"), [], ["optimizer.name", "did you mean 'fused_sgdw'"]),
    "negative lr": (GOOD.replace("lr: 0.1", "lr: -0.1"), [], ["optimizer.lr", "greater than 0", "-0.1"]),
    "wrong type": (GOOD.replace("epochs: 2", "epochs: two"), [], ["train.epochs", "expected a number", "'two'"]),
    "bad value in one run only": (
        GOOD.replace("{name: cosine}", "{name: cosine, eta_min: -1}"),
        [],
        ["scheduler.eta_min", "greater than or equal to 0", "run: two-seed0"],
    ),
    "typo'd schedule": (
        GOOD.replace("{name: cosine}", "{name: cosin}"),
        [],
        ["scheduler.name", "did you mean 'cosine'"],
    ),
    "unknown top-level key": ("seed: [0]\n" + GOOD, [], ["seed", "did you mean 'seeds'"]),
    "momentum on adam": (
        GOOD.replace("{name: two,", "{name: two, optimizer: {name: adam, momentum: 0.9},"),
        [],
        ["optimizer.momentum", "betas"],
    ),
    "plateau mode typo": (
        GOOD.replace("{name: cosine}", "{name: plateau, mode: maximum}"),
        [],
        ["scheduler.mode", "did you mean 'max'"],
    ),
    "bad --set key": (GOOD, ["optimizer.lrr=0.1"], ["optimizer.lrr", "did you mean 'lr'"]),
    "bad --set syntax": (GOOD, ["optimizer.lr"], ["--set", "key=value"]),
    "bad --only": (GOOD, [], ["--only", "matches no run"]),
    "infinite lr": (GOOD, ["optimizer.lr=.inf"], ["optimizer.lr", "finite number", "inf"]),
    "NaN weight decay": (GOOD, ["optimizer.weight_decay=.nan"], ["optimizer.weight_decay", "finite number"]),
    "batch larger than the subset": (
        GOOD,
        ["data.train_subset=100", "data.batch_size=128"],
        ["data.batch_size 128 is larger than the 100 training images", "every run"],
    ),
    "batch larger than CIFAR-10": (GOOD, ["data.batch_size=60000"], ["larger than the 50000 training images"]),
    "YAML alias": (
        "shared: &s {lr: 0.1}\n" + GOOD.replace("momentum: 0.9}", "momentum: 0.9, <<: *s}"),
        [],
        ["aliases"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_config_exits_2_names_the_key_and_writes_nothing(case, tmp_path, capsys):
    text, sets, expected = BAD_CASES[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    argv = ["--config", str(config), "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    if case == "bad --only":
        argv += ["--only", "three*"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert not out.exists()


def test_good_config_dry_run_prints_the_grid_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "good.yaml"
    config.write_text(GOOD)
    out = tmp_path / "out"
    assert main(["--config", str(config), "--out", str(out), "--dry-run", "--set", "optimizer.lr=1e-2"]) == 0
    printed = capsys.readouterr().out
    assert "one-seed0" in printed and "two-seed0" in printed and "cosine" in printed and "0.01" in printed
    assert not out.exists()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--out", "--epochs", "--set", "--dry-run", "--fresh", "--device", "--only", "--profile"):
        assert option in text


def test_run_names_are_readable_from_block_and_dotted_axes():
    grid = expand_grid(
        {
            "grid": {
                "optimizer": [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "nadam", "lr": 2e-3}],
                "scheduler": [{"name": "plateau", "mode": "max", "min_lr": 1e-4}, {"name": "step", "step_size": "35%"}],
            }
        }
    )
    assert [r.name for r in grid.runs] == [
        "sgd-lr0.1-m0.9-plateau-max-minlr0.0001-seed0",
        "sgd-lr0.1-m0.9-step-every35pct-seed0",
        "nadam-lr0.002-plateau-max-minlr0.0001-seed0",
        "nadam-lr0.002-step-every35pct-seed0",
    ]
    lr_momentum = load_grid(CONFIGS / "lr_momentum.yaml")
    assert [r.name for r in lr_momentum.runs] == [
        "lr0.01-m0.5-seed0",
        "lr0.01-m0.9-seed0",
        "lr0.2-m0.5-seed0",
        "lr0.2-m0.9-seed0",
    ]


def test_dry_run_profile_and_device_flags(capsys):
    argv = ["--config", str(CONFIGS / "group1.yaml"), "--dry-run", "--device", "cpu", "--only", "sgd*"]
    assert main([*argv, "--profile", "faithful"]) == 0
    printed = capsys.readouterr().out
    assert "faithful profile" in printed and "step(every 70, x0.1)" in printed and "200" in printed
    assert "adam-seed0" not in printed and "sgd-seed0" in printed
    assert main(argv) == 0
    assert "step(every 11, x0.1)" in capsys.readouterr().out  # quick: 35% of 30 epochs
    grid = load_grid(CONFIGS / "group1.yaml", device="cpu", epochs=10)
    assert {(r.config.train.device, r.config.train.epochs) for r in grid.runs} == {("cpu", 10)}


ALIAS_BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
base:
  optimizer: {name: sgd}
grid:
  optimizer.lr: *h
"""


def test_a_yaml_alias_bomb_fails_fast_small_and_lean(tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text(ALIAS_BOMB)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        assert main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert "aliases (*a) are not accepted" in err and "line 2" in err
    assert len(err) < 2_000 and seconds < 5 and peak < 20 * 2**20, (len(err), seconds, peak)
    assert not (tmp_path / "out").exists()


def test_every_config_error_is_bounded():
    many_bad = {"base": {"optimizer": {"name": "sgd"}}, "grid": {"optimizer.lr": [-float(i) for i in range(1, 500)]}}
    with pytest.raises(ConfigError) as err:
        expand_grid(many_bad)
    assert len(err.value.problems) == 41 and err.value.problems[-1] == "... and 459 more problems"
    huge_value = {"base": {"train": {"epochs": "x" * 1_000_000}}}
    with pytest.raises(ConfigError) as err:
        expand_grid(huge_value)
    assert len(str(err.value)) < 1_000
    too_many = {"grid": {f"k{i}": list(range(10)) for i in range(10)}}
    with pytest.raises(ConfigError, match="expands to 10,000,000,000 runs; at most 10,000"):
        expand_grid(too_many)


def test_names_defined_once_agree_with_their_owners():
    """config imports no torch, so it spells out FusedSGDW's backends and CIFAR-10's size; these tie them."""
    from fasttrick.config.schema import CIFAR10_TRAIN_IMAGES, FusedSGDWConfig
    from fasttrick.data import NUM_TRAIN
    from fasttrick.ops import KERNEL_BACKENDS

    assert get_args(FusedSGDWConfig.model_fields["backend"].annotation) == KERNEL_BACKENDS
    assert CIFAR10_TRAIN_IMAGES == NUM_TRAIN
