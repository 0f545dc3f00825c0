"""Fused arrays in the grid: which runs share an array, how a group splits, --fuse, and the arrays
trained by the engine against the same runs trained one by one (synthetic data, a 1/8-width model)."""

from __future__ import annotations

import json

import pytest

from fasttrick.config import ConfigError
from fasttrick.data import Cifar10
from fasttrick.engine import CHECKPOINT, Interrupted, read_checkpoint, train_array, train_run
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

from engine_helpers import TINY, learnable_cifar10, quiet_session


def grid_of(runs: list[dict], base: dict | None = None, seeds=(0,)):
    return expand_grid({"name": "t", "base": base or TINY, "runs": runs, "seeds": list(seeds)})


def names(runs) -> list[str]:
    return [r.name.removesuffix("-seed0") for r in runs]


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
            {"name": "d", "data": {"train_subset": 512}},  # another batch stream
            {"name": "e", "model": {"width": 0.25}},
            {"name": "f", "train": {"epochs": 3}},
            {"name": "g", "optimizer": {"nesterov": True}},  # group-wide in the fused launch
            {"name": "h", "optimizer": {"name": "sgd"}},
            {"name": "i", "optimizer": {"name": "adam", "lr": 1e-3}},
            {"name": "j", "optimizer": {"name": "nadam"}},  # Adam's family: each member steps alone
            {"name": "k", "optimizer": {"name": "adamw", "weight_decay": 0.05}},
            {"name": "l", "data": {"batch_size": 64}},
        ]
    )
    groups = [names(g) for g in compatible_groups(grid.runs, {})]
    assert groups == [["a", "b", "c"], ["d"], ["e"], ["f"], ["g"], ["h"], ["i", "j", "k"], ["l"]]


def test_runs_at_different_epochs_do_not_share_an_array():
    grid = grid_of([{"name": "a"}, {"name": "b"}, {"name": "c"}])
    groups = compatible_groups(grid.runs, {"b-seed0": 1})
    assert [names(g) for g in groups] == [["a", "c"], ["b"]]


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
    assert unit.fused and names(unit.runs) == ["a", "b", "c"]
    assert unit.name == "array of 3 (a-seed0, b-seed0, c-seed0)"
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
    grid = grid_of([{"name": "a"}], seeds=(0, 1))
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
    grid = grid_of([{"name": "a"}, {"name": "b", "optimizer": {"lr": 0.2}}, {"name": "c", "train": {"epochs": 3}}])
    assert describe_plan(grid.runs, "off") == ["fuse off: every run trains alone"]
    assert describe_plan(grid.runs, 4) == ["fuse 4: 1 array(s), 1 run(s) alone", "  array of 2: a-seed0, b-seed0"]
    auto = describe_plan(grid.runs, "auto")
    assert auto[0].startswith("fuse auto: 1 group(s)") and auto[1] == "  2 runs: a-seed0, b-seed0"


# ---------------------------------------------------------------------------------------------
# Arrays trained by the engine, against the same runs trained one by one
# ---------------------------------------------------------------------------------------------

COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


@pytest.fixture(scope="module")
def synthetic() -> Cifar10:
    return learnable_cifar10()


def files_of(folder) -> set[str]:
    """A run folder's file names, its TensorBoard event file as one (its name holds a time and a process id)."""
    return {"events" if p.name.startswith("events.out.tfevents.") else p.name for p in folder.iterdir()}


def rows_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_rows_close(fused: list, separate: list, rel: float = 2e-2, acc: float = 0.02) -> None:
    """Per epoch: losses within ``rel``, accuracies within ``acc``, the lr equal."""
    assert len(fused) == len(separate)
    for a, b in zip(fused, separate, strict=True):
        assert a["epoch"] == b["epoch"] and a["lr"] == b["lr"]
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=rel), (key, a, b)
        for key in ("train_acc", "val_acc"):
            assert abs(a[key] - b[key]) <= acc, (key, a, b)


SGD_MEMBERS = [
    {"name": "lr-step", "optimizer": {"lr": 0.1}, "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}},
    {"name": "wd0-m0", "optimizer": {"lr": 0.05, "momentum": 0.0, "weight_decay": 0.0}},
    {
        "name": "damp-warm",
        "optimizer": {"lr": 0.02, "momentum": 0.5, "dampening": 0.3},
        "scheduler": {"name": "cosine"},
        "warmup": {"epochs": 1, "start_factor": 0.5},
    },
]
ADAM_MEMBERS = [
    {"name": "adam", "optimizer": {"name": "adam", "lr": 2e-3}},
    {"name": "adamw", "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}},
    {"name": "nadam", "optimizer": {"name": "nadam", "lr": 2e-3}, "scheduler": {"name": "plateau", "patience": 0}},
]


# Fused and alone, the same sums run in other orders (grouped against dense convolutions): float32 rounding,
# which training carries on (lr 0.1 on 768 images, BatchNorm; Adam's first steps, where m / sqrt(v) of a tiny
# gradient is about its sign): within 2% per epoch, the fused grid's acceptance figure.
@pytest.mark.parametrize(
    ("members", "rel"), [(SGD_MEMBERS, 2e-2), (ADAM_MEMBERS, 2e-2)], ids=["fused_sgdw", "adam-family"]
)
def test_an_array_trains_as_its_runs_do_one_by_one(synthetic, tmp_path, members, rel):
    grid = grid_of(members)
    runs = [r.config for r in grid.runs]
    fused_dirs = [tmp_path / "fused" / r.name for r in grid.runs]
    outcomes = train_array(runs, fused_dirs, quiet_session(synthetic), names=[r.name for r in grid.runs])
    assert [o.status for o in outcomes] == ["finished"] * len(runs)
    for run, fused_dir in zip(grid.runs, fused_dirs, strict=True):
        alone = train_run(run.config, tmp_path / "alone" / run.name, quiet_session(synthetic))
        assert_rows_close(rows_of(fused_dir), alone.rows, rel=rel)
        # every file a separate run writes (result/diagnosis are the grid's, tested below)
        assert {p.name for p in fused_dir.iterdir()} >= {
            "metrics.jsonl",
            "metrics.csv",
            "status.json",
            "environment.json",
            CHECKPOINT,
        }
        assert json.loads((fused_dir / "environment.json").read_text())["array"]["members"] == len(runs)


def test_a_member_that_diverges_is_frozen_and_leaves_the_others_bit_identical(synthetic, tmp_path):
    healthy = grid_of([*SGD_MEMBERS[:2], {"name": "third", "optimizer": {"lr": 0.01}}])
    exploding = grid_of([*SGD_MEMBERS[:2], {"name": "third", "optimizer": {"lr": 1e30}}])
    ended: list[tuple[str, str]] = []
    dirs = {}
    for label, grid in (("healthy", healthy), ("exploding", exploding)):
        dirs[label] = [tmp_path / label / r.name for r in grid.runs]
        outcomes = train_array(
            [r.config for r in grid.runs],
            dirs[label],
            quiet_session(synthetic),
            on_member_end=lambda name, outcome: ended.append((name, outcome.status)),
        )
    assert [o.status for o in outcomes] == ["finished", "finished", "diverged"]
    assert ended[-3:] == [("third-seed0", "diverged"), ("lr-step-seed0", "finished"), ("wd0-m0-seed0", "finished")]
    assert len(rows_of(dirs["exploding"][2])) == 1  # stopped at its first epoch, as a separate run stops
    for a, b in zip(dirs["healthy"][:2], dirs["exploding"][:2], strict=True):
        assert [{k: r[k] for k in COMPARED} for r in rows_of(a)] == [{k: r[k] for k in COMPARED} for r in rows_of(b)]


def test_an_interrupted_array_resumes_from_its_members_checkpoints(synthetic, tmp_path):
    grid = grid_of(SGD_MEMBERS, base={**TINY, "train": {**TINY["train"], "epochs": 3}})
    runs = [r.config for r in grid.runs]
    whole = [tmp_path / "whole" / r.name for r in grid.runs]
    train_array(runs, whole, quiet_session(synthetic))
    cut = [tmp_path / "cut" / r.name for r in grid.runs]

    def stop_after_first_epoch(name, row):
        if row["epoch"] == 1 and name == grid.runs[-1].name:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        train_array(runs, cut, quiet_session(synthetic), on_epoch_end=stop_after_first_epoch)
    lines: list[str] = []
    train_array(runs, cut, quiet_session(synthetic, lines))
    assert sum("resuming after epoch 1" in line for line in lines) == len(runs)
    for a, b in zip(whole, cut, strict=True):
        assert [{k: r[k] for k in COMPARED} for r in rows_of(a)] == [{k: r[k] for k in COMPARED} for r in rows_of(b)]


def test_checkpoints_move_between_a_member_and_a_separate_run(synthetic, tmp_path):
    """A member's checkpoint resumes as a separate run, and a separate run's as a member."""
    grid = grid_of(SGD_MEMBERS[:2], base={**TINY, "train": {**TINY["train"], "epochs": 3}})
    runs = [r.config for r in grid.runs]

    def stop_after_first_epoch(name, row):
        # after the last member's hook: every member has its epoch-1 checkpoint on disk
        if row["epoch"] == 1 and name in (grid.runs[-1].name, "run"):
            raise Interrupted("stop")

    # member -> separate: member 1 resumed alone ends as the run trained alone from the start
    member_dirs = [tmp_path / "member" / r.name for r in grid.runs]
    with pytest.raises(Interrupted):
        train_array(runs, member_dirs, quiet_session(synthetic), on_epoch_end=stop_after_first_epoch)
    state = read_checkpoint(member_dirs[1] / CHECKPOINT)
    plain = ResNet18(width=TINY["model"]["width"])
    plain.load_state_dict(state["model"])  # a plain ResNet-18 state dict
    assert state["optimizer"]["state"] == {}  # momentum 0: no buffer, as torch.optim.SGD keeps none
    with_momentum = read_checkpoint(member_dirs[0] / CHECKPOINT)["optimizer"]["state"]
    assert set(with_momentum[0]) == {"momentum_buffer"} and len(with_momentum) == len(list(plain.parameters()))
    resumed = train_run(runs[1], member_dirs[1], quiet_session(synthetic))
    alone = train_run(runs[1], tmp_path / "alone", quiet_session(synthetic))
    assert_rows_close(resumed.rows, alone.rows)

    # separate -> member: both runs interrupted alone after epoch 1, then resumed as one array
    separate_dirs = [tmp_path / "separate" / r.name for r in grid.runs]
    for run, folder in zip(runs, separate_dirs, strict=True):
        with pytest.raises(Interrupted):
            train_run(run, folder, quiet_session(synthetic), name="run", on_epoch_end=stop_after_first_epoch)
    outcomes = train_array(runs, separate_dirs, quiet_session(synthetic))
    assert_rows_close(outcomes[1].rows, alone.rows)


def test_members_must_share_the_batch_stream_and_resume_together(synthetic, tmp_path):
    grid = grid_of([{"name": "a"}, {"name": "b", "model": {"width": 0.25}}])
    with pytest.raises(ValueError, match="differ in more than optimizer"):
        train_array([r.config for r in grid.runs], [tmp_path / "a", tmp_path / "b"], quiet_session(synthetic))
    grid = grid_of([{"name": "a"}, {"name": "b", "optimizer": {"lr": 0.2}}])
    runs = [r.config for r in grid.runs]
    train_run(runs[0], tmp_path / "a", quiet_session(synthetic))  # a at epoch 2, b fresh
    with pytest.raises(Exception, match="same epoch"):
        train_array(runs, [tmp_path / "a", tmp_path / "b"], quiet_session(synthetic))


def test_a_grid_fused_gives_the_summary_and_files_of_the_grid_run_one_by_one(synthetic, tmp_path):
    grid = expand_grid(
        {
            "name": "lr_momentum",
            "base": {**TINY, "scheduler": {"name": "constant"}},
            # lr 0.2 with momentum 0.9 is unstable on 768 images (val loss 17 alone, 1110 fused by epoch 2): where
            # a run is chaotic, rounding differences grow without bound and per-epoch numbers cannot be compared
            "grid": {"optimizer.lr": [0.01, 0.05], "optimizer.momentum": [0.5, 0.9]},
        }
    )
    lines: list[str] = []
    fused = run_grid(grid, tmp_path / "fused", session=quiet_session(synthetic, lines), fuse=4)
    alone = run_grid(grid, tmp_path / "alone", session=quiet_session(synthetic), fuse="off")
    assert fused == alone == {r.name: "finished" for r in grid.runs}
    assert any("array of 4" in line for line in lines)
    for run in grid.runs:
        a, b = tmp_path / "fused" / run.name, tmp_path / "alone" / run.name
        assert files_of(a) == files_of(b)
        assert_rows_close(rows_of(a), rows_of(b))
        da, db = (json.loads((d / "diagnosis.json").read_text()) for d in (a, b))
        assert [d["mode"] for d in da["diagnoses"]] == [d["mode"] for d in db["diagnoses"]]
    summaries = [(tmp_path / d / "summary.csv").read_text().splitlines() for d in ("fused", "alone")]
    assert summaries[0][0] == summaries[1][0] and len(summaries[0]) == len(summaries[1]) == 5
    write_summary(tmp_path / "fused")


def test_fuse_on_the_command_line(synthetic, tmp_path, monkeypatch, capsys):
    from fasttrick import train

    config = tmp_path / "lr_momentum.yaml"
    config.write_text(
        "name: lr_momentum\nbase: {data: {batch_size: 128}, model: {width: 0.125}, optimizer: {name: fused_sgdw}}\n"
        "grid: {optimizer.lr: [0.01, 0.2], optimizer.momentum: [0.5, 0.9]}\n"
    )
    assert train.main(["--config", str(config), "--dry-run", "--fuse", "3", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "fuse 3: 2 array(s), 0 run(s) alone" in out and "array of 2:" in out
    assert train.main(["--config", str(config), "--dry-run", "--fuse", "x"]) == 2
    assert "--fuse 'x'" in capsys.readouterr().err
