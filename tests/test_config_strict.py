"""Configs are read strictly and checked up front: duplicate keys, YAML 1.1's booleans and numbers given as
text are refused or read as written; seeds come from ``seeds:`` alone; ``--only`` limits what is checked."""

from __future__ import annotations

import pytest

from fasttrick.config import ConfigError, RunConfig, load_yaml
from fasttrick.grid import expand_grid
from fasttrick.train import main

GOOD = """\
seeds: [0, 1]
base:
  train: {epochs: 2, device: cpu}
  optimizer: {name: fused_sgdw, lr: 0.1, momentum: 0.9}
runs:
  - {name: one}
  - {name: two, optimizer: {name: adam, lr: 0.001}}
"""


def test_yaml_scalars_are_read_as_yaml_1_2():
    data = load_yaml("a: no\nb: off\nc: yes\nd: true\ne: False\nf: 012\ng: 0x10\nh: 1:30\ni: 1_000\nj: ~\nk: '0.5'")
    assert data == {"a": "no", "b": "off", "c": "yes", "d": True, "e": False, "f": 12, "g": 16, "h": "1:30"} | {
        "i": 1000,
        "j": None,
        "k": "0.5",
    }


def test_a_key_given_twice_names_both_lines():
    with pytest.raises(Exception, match="key 'lr' is given twice in one mapping, on line 2 and line 4"):
        load_yaml("optimizer:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    assert load_yaml("a: {lr: 1}\nb: {lr: 2}") == {"a": {"lr": 1}, "b": {"lr": 2}}  # one key per mapping


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("optimizer.lr", "yes", "expected a number, got the text 'yes'"),
        ("optimizer.lr", "true", "expected a number, got true"),
        ("optimizer.weight_decay", "off", "expected a number, got the text 'off'"),
        ("optimizer.lr", '"0.5"', "got the text '0.5'; write it without quotes"),
        ("data.batch_size", '"64"', "got the text '64'; write it without quotes"),
        ("model.width", "no", "expected a number"),
        ("seed", "4294967296", "less than or equal to 4294967295"),
    ],
)
def test_numbers_are_numbers(field, text, expected):
    layered: dict = {}
    *parents, last = field.split(".")
    node = layered
    for part in parents:
        node = node.setdefault(part, {"name": "fused_sgdw"} if part == "optimizer" else {})
    node[last] = load_yaml(f"v: {text}")["v"]
    with pytest.raises(ValueError, match=expected):
        RunConfig.model_validate(layered)


def test_booleans_still_take_yes_and_no():
    run = RunConfig.model_validate(load_yaml("train: {compile: off, deterministic: yes}\noptimizer: {name: sgd}"))
    assert run.train.compile is False and run.train.deterministic is True
    assert RunConfig.model_validate({"optimizer": {"name": "sgd", "lr": 1}}).optimizer.lr == 1.0  # ints are numbers


def test_names_are_text():
    grid = expand_grid(load_yaml("name: no\nruns:\n  - {name: off}\n  - {name: 'yes'}"))
    assert grid.name == "no" and [r.name for r in grid.runs] == ["off-seed0", "yes-seed0"]
    with pytest.raises(ConfigError, match=r"runs\[0\].name: expected a text name, got True"):
        expand_grid({"runs": [{"name": True}]})


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"base": {"seed": 3}}, "base.seed"),
        ({"runs": [{"name": "a", "seed": 3}]}, r"runs\[0\].seed"),
        ({"grid": {"seed": [0, 1]}}, "grid.seed"),
        ({"profiles": {"quick": {"seed": 1}}}, "profiles.quick.seed"),
    ],
)
def test_a_seed_outside_seeds_is_refused(data, where):
    with pytest.raises(ConfigError, match=rf"{where}: a grid's seeds come from seeds:"):
        expand_grid(data)


def test_set_seed_names_the_run_and_is_refused_over_several_seeds():
    grid = expand_grid({"runs": [{"name": "a"}]}, overrides=["seed=7"])
    assert [(r.name, r.config.seed) for r in grid.runs] == [("a-seed7", 7)]
    with pytest.raises(ConfigError, match=r"--set seed=7: this grid's seeds: \[0, 1\] name its runs.*--only"):
        expand_grid({"seeds": [0, 1], "runs": [{"name": "a"}]}, overrides=["seed=7"])


def test_set_and_only_check_only_the_selected_runs(tmp_path, capsys):
    config = tmp_path / "g.yaml"
    config.write_text(GOOD)
    grid = expand_grid(load_yaml(GOOD), overrides=["optimizer.backend=cpu"], only=["one-*"])
    assert [r.name for r in grid.select(["one-*"])] == ["one-seed0", "one-seed1"]
    assert all(r.config.optimizer.backend == "cpu" for r in grid.runs)  # the Adam runs, invalid now, are dropped
    with pytest.raises(ConfigError, match=r"optimizer\.backend: unknown key"):
        expand_grid(load_yaml(GOOD), overrides=["optimizer.backend=cpu"])
    argv = ["--config", str(config), "--out", str(tmp_path / "out"), "--dry-run"]
    assert main([*argv, "--set", "optimizer.backend=cpu", "--only", "one-*"]) == 0
    assert main([*argv, "--set", "optimizer.backend=cpu", "--only", "two-*"]) == 2
    assert "optimizer.backend: unknown key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("momentum: 0.9}", "momentum: 0.9, lr: 0.2}"), "line 4: key 'lr' is given twice"),
        (GOOD + "base: {}\n", "line 8: key 'base' is given twice in one mapping, on line 2 and line 8"),
        (GOOD.replace("lr: 0.1", "lr: yes"), "optimizer.lr: expected a number, got the text 'yes'"),
        (GOOD.replace("lr: 0.1", "lr: '0.5'"), "write it without quotes"),
    ],
)
def test_the_cli_refuses_with_exit_2(tmp_path, capsys, text, expected):
    config = tmp_path / "g.yaml"
    config.write_text(text)
    assert main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_one_setting_given_twice_under_two_spellings_is_refused():
    with pytest.raises(ConfigError, match=r"base\.optimizer\.lr: given twice"):
        expand_grid({"base": {"optimizer.lr": 0.1, "optimizer": {"name": "sgd", "lr": 0.2}}})
    with pytest.raises(ConfigError, match=r"runs\[0\]\.train\.epochs: given twice"):
        expand_grid({"runs": [{"train.epochs": 3, "train": {"epochs": 4}}]})
    with pytest.raises(ConfigError, match=r"base: optimizer.lr beside the optimizer: block; write them inside"):
        expand_grid({"base": {"optimizer.lr": 0.3, "optimizer": {"name": "sgd"}}})
    grid = expand_grid({"base": {"optimizer": {"name": "sgd"}}, "runs": [{"optimizer.lr": 0.3}]})  # layers
    assert grid.runs[0].config.optimizer.name == "sgd" and grid.runs[0].config.optimizer.lr == 0.3
