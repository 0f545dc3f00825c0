"""TensorBoard event files: every run of a tiny grid, trained alone or fused, writes its own scalars per
epoch; without tensorboard installed, runs train and say once how to turn the logging on."""

from __future__ import annotations

import json
import sys

import pytest

from fasttrick.data import Cifar10
from fasttrick.engine import board
from fasttrick.grid import expand_grid, run_grid

from engine_helpers import TINY, learnable_cifar10, quiet_session

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

GRID = {
    "name": "tb",
    "base": {**TINY, "train": {**TINY["train"], "epochs": 1}},
    "grid": {"optimizer.lr": [0.01, 0.05]},
}


@pytest.fixture(scope="module")
def synthetic() -> Cifar10:
    return learnable_cifar10()


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("fuse", ["off", 2])
def test_each_run_of_a_grid_writes_its_scalars(synthetic, tmp_path, fuse):
    grid = expand_grid(GRID)
    run_grid(grid, tmp_path, session=quiet_session(synthetic), fuse=fuse)
    for run in grid.runs:
        row = json.loads((tmp_path / run.name / "metrics.jsonl").read_text().splitlines()[-1])
        found = scalars(tmp_path / run.name)
        assert set(found) == {*board.TAGS.values(), "optimizer/momentum"}
        for key, tag in board.TAGS.items():
            assert found[tag] == [(1, pytest.approx(row[key], rel=1e-6))]
        assert found["optimizer/momentum"] == [(1, pytest.approx(0.9))]
        assert found["optimizer/lr"][0][1] == pytest.approx(run.config.optimizer.lr, rel=1e-6)


def test_without_tensorboard_runs_train_and_say_so_once(synthetic, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as where it is absent
    monkeypatch.setattr(board, "_said_off", False)
    lines: list[str] = []
    grid = expand_grid(GRID)
    assert run_grid(grid, tmp_path, session=quiet_session(synthetic, lines), fuse="off") == {
        r.name: "finished" for r in grid.runs
    }
    off = [line for line in lines if "TensorBoard logging is off" in line]
    assert len(off) == 1 and "pip install tensorboard" in off[0]
    assert not list(tmp_path.glob(f"*/{board.EVENT_PREFIX}*"))
