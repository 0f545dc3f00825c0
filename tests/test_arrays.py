"""Fused arrays in the grid: which runs share an array, how a group splits, --fuse, and the arrays
trained by the engine against the same runs trained one by one (synthetic data, a 1/16-width model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fasttrick.config import ConfigError
from fasttrick.data import Cifar10
from fasttrick.engine import CHECKPOINT, Interrupted, Session, read_checkpoint, train_array, train_run
from fasttrick.grid import expand_grid, run_grid
from fasttrick.grid.arrays import (
    MIN_GAIN,
    Unit,
    compatible_groups,
    describe_plan,
    parse_fuse,
    plan_units,
    split,
)
from fasttrick.grid.memory import USABLE_SHARE, MemoryProbe, members_fitting
from fasttrick.models import ResNet18
from fasttrick.results.summary import write_summary

TINY = {
    "data": {"batch_size": 128},
    "model": {"width": 0.0625},
    "train": {"epochs": 2, "device": "cpu", "compile": False},
    "optimizer": {"name": "fused_sgdw", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
}


def grid_of(runs: list[dict], base: dict | None = None, **extra):
    return expand_grid({"name": "t", "base": base or TINY, "runs": runs, **extra})


# ---------------------------------------------------------------------------------------------
# Planning (no training)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("off", "off"), ("1", 1), ("16", 16)])
def test_parse_fuse(value, parsed):
    assert parse_fuse(value) == parsed


@pytest.mark.parametrize("value", ["0", "-2", "four", "", "2.5", "on"])
def test_parse_fuse_refuses(value):
    with pytest.raises(ConfigError, match="--fuse"):
        parse_fuse(value)


def test_runs_that_differ_in_hyperparameters_and_schedule_share_a_group():
    grid = grid_of(
        [
            {"name": "a", "optimizer": {"lr": 0.1}},
            {"name": "b", "optimizer": {"momentum": 0.5, "dampening": 0.1, "weight_decay": 0}},
            {"name": "c", "scheduler": {"name": "cosine"}, "warmup": {"epochs": 1}},
            {"name": "d", "seed": 1},  # another batch stream
            {"name": "e", "model": {"width": 0.125}},
            {"name": "f", "train": {"epochs": 3}},
            {"name": "g", "optimizer": {"nesterov": True}},  # group-wide in the fused launch
            {"name": "h", "optimizer": {"name": "sgd"}},
            {"name": "i", "optimizer": {"name": "adam", "lr": 1e-3}},
            {"name": "j", "optimizer": {"name": "nadam"}},  # Adam's family: each member steps alone
            {"name": "k", "optimizer": {"name": "adamw", "weight_decay": 0.05}},
            {"name": "l", "data": {"batch_size": 64}},
        ]
    )
    groups = [[r.name for r in g] for g in compatible_groups(grid.runs, {})]
    assert groups == [["a", "b", "c"], ["d"], ["e"], ["f"], ["g"], ["h"], ["i", "j", "k"], ["l"]]


def test_runs_at_different_epochs_do_not_share_an_array():
    grid = grid_of([{"name": "a"}, {"name": "b"}, {"name": "c"}])
    groups = compatible_groups(grid.runs, {"b": 1})
    assert [[r.name for r in g] for g in groups] == [["a", "c"], ["b"]]


@pytest.mark.parametrize(
    ("count", "most", "sizes"),
    [(25, 16, [13, 12]), (4, 4, [4]), (5, 2, [2, 2, 1]), (3, 8, [3]), (7, 1, [1] * 7), (32, 32, [32])],
)
def test_split_gives_near_equal_arrays_in_order(count, most, sizes):
    grid = grid_of([{"name": f"r{i}", "optimizer": {"lr": 0.01 * (i + 1)}} for i in range(count)])
    units = split(grid.runs, most)
    assert [len(u.runs) for u in units] == sizes
    assert [r.name for u in units for r in u.runs] == [r.name for r in grid.runs]


def test_plan_off_and_fixed():
    grid = grid_of([{"name": n, "optimizer": {"lr": lr}} for n, lr in (("a", 0.1), ("b", 0.2), ("c", 0.3))])
    assert plan_units(grid.runs, "off", {}, print) == [Unit((r,)) for r in grid.runs]
    (unit,) = plan_units(grid.runs, 4, {}, print)
    assert unit.fused and [r.name for r in unit.runs] == ["a", "b", "c"]
    assert unit.name == "array of 3 (a, b, c)"
    assert [len(u.runs) for u in plan_units(grid.runs, 2, {}, print)] == [2, 1]


def test_plan_auto_follows_the_measured_gain_and_the_memory_cap():
    grid = grid_of([{"name": f"r{i}", "optimizer": {"lr": 0.01 * (i + 1)}} for i in range(6)])
    lines: list[str] = []
    measured = []

    def measure(run, members):
        measured.append(members)
        return gain

    gain = MIN_GAIN - 0.01
    units = plan_units(grid.runs, "auto", {}, lines.append, measure=measure, fit=lambda run: 99)
    assert all(not u.fused for u in units) and len(units) == 6
    assert "train one by one" in lines[-1]
    gain = MIN_GAIN
    units = plan_units(grid.runs, "auto", {}, lines.append, measure=measure, fit=lambda run: 4)
    assert [len(u.runs) for u in units] == [3, 3]  # capped at 4 by memory: two arrays of near-equal size
    assert measured == [4, 4] and "arrays of at most 4" in lines[-1]


def test_plan_auto_measures_nothing_for_a_lone_run():
    grid = grid_of([{"name": "a"}, {"name": "b", "seed": 1}])
    units = plan_units(grid.runs, "auto", {}, print, measure=pytest.fail, fit=pytest.fail)
    assert [len(u.runs) for u in units] == [1, 1]


def test_members_fitting_from_two_probes():
    gib = 2**30
    one = MemoryProbe("r", 3 * gib, 100 * gib, "GPU")
    two = MemoryProbe("r", 5 * gib, 100 * gib, "GPU")  # 2 GiB a member, 1 GiB shared
    assert members_fitting(one, two) == int((USABLE_SHARE * 100 - 1) // 2)
    huge = MemoryProbe("r", 60 * gib, 100 * gib, "GPU")
    assert members_fitting(huge, MemoryProbe("r", 119 * gib, 100 * gib, "GPU")) == 1


def test_describe_plan():
    grid = grid_of([{"name": "a"}, {"name": "b", "optimizer": {"lr": 0.2}}, {"name": "c", "seed": 3}])
    assert describe_plan(grid.runs, "off") == ["fuse off: every run trains alone"]
    assert describe_plan(grid.runs, 4) == ["fuse 4: 1 array(s), 1 run(s) alone", "  array of 2: a, b"]
    auto = describe_plan(grid.runs, "auto")
    assert auto[0].startswith("fuse auto: 1 group(s)") and auto[1] == "  2 runs: a, b"
