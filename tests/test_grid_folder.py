"""The grid folder: one writer at a time (two trainers started at the same instant), --fresh under a live
trainer, unusable --out, malformed run files, temp files swept, and a finished grid reread without a write.

Synthetic data and a 1/8-width ResNet-18 keep each run to a second or two; the two-trainer race runs
two real CLI processes on real CIFAR-10 (FASTTRICK_DATA, 256 images).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_grid_workers import grid_cache  # noqa: F401 (a fixture)

from fasttrick.data import Cifar10
from fasttrick.engine import Session
from fasttrick.grid import expand_grid, run_grid
from fasttrick.grid.folder import HOLDER_NAME, LOCK_NAME, GridFolderError, lock_grid_folder
from fasttrick.train import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
TINY = {
    "data": {"batch_size": 128},
    "model": {"width": 0.125},
    "train": {"epochs": 1, "device": "cpu", "compile": False},
}
CLI_TINY = [
    *("--set", "train.epochs=2", "--set", "train.device=cpu", "--set", "model.width=0.125"),
    *("--set", "data.train_subset=256", "--set", "data.test_subset=128", "--set", "data.batch_size=128"),
    *("--only", "fused_sgdw-step-seed0", "--no-bar"),
]


@pytest.fixture(scope="module")
def session_data() -> Cifar10:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=512)
    images = rng.integers(0, 255, size=(512, 32, 32, 3)).astype(np.uint8)
    return Cifar10.from_arrays(images[:384], labels[:384], images[384:], labels[384:], [str(i) for i in range(10)], "s")


def quiet(data, lines=None) -> Session:
    return Session(log=(lines if lines is not None else []).append, bar=False, dataset=data)


@pytest.fixture
def finished(session_data, tmp_path) -> Path:
    out = tmp_path / "out"
    assert run_grid(expand_grid({"base": TINY}), out, session=quiet(session_data)) == {"seed0": "finished"}
    return out


RACER = """
import os, pathlib, sys, time
from fasttrick.train import main
import fasttrick.grid.runner, fasttrick.engine  # imports paid before the start line
start = pathlib.Path(sys.argv[1])
(start.parent / f"ready-{os.getpid()}").touch()
while len(list(start.parent.glob("ready-*"))) < 2:
    time.sleep(0.001)
sys.exit(main(sys.argv[2:]))
"""


def test_two_trainers_started_at_the_same_instant_one_writes_the_other_names_it(grid_cache, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    (tmp_path / "race").mkdir()
    argv = ["--config", str(SMOKE), "--out", str(out), *CLI_TINY]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path / "race" / "start"), *argv, "--set", f"optimizer.lr={lr}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lr in (0.1, 0.05)
    ]
    results = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in racers]
    codes = sorted(rc for *_, rc in results)
    assert codes == [0, 2], results
    (winner, *_), (_, _, loser_err, _) = sorted(results, key=lambda r: r[3])
    assert f"is in use by another trainer (pid {winner} on host {socket.gethostname()}, started 20" in loser_err
    assert "Traceback" not in loser_err
    run_dir = out / "fused_sgdw-step-seed0"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    winner_lr = {pid: lr for (pid, *_), lr in zip(results, ("0.1", "0.05"), strict=True)}[winner]
    assert f"  lr: {winner_lr}\n" in (run_dir / "config.yaml").read_text()  # the winner's config, and only it
    assert not (out / HOLDER_NAME).exists()  # released when the winner ended


def test_fresh_never_deletes_a_folder_a_live_trainer_holds(finished, capsys):
    with lock_grid_folder(finished) as lock:
        assert lock.writable
        argv = ["--config", str(SMOKE), "--out", str(finished), *CLI_TINY, "--fresh"]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"refused: --out {finished} is in use by another trainer (pid {os.getpid()} on host" in err
    assert (finished / "seed0" / "checkpoint.pt").is_file()  # untouched


def test_an_out_that_is_a_file_is_refused_clearly(tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    assert main(["--config", str(SMOKE), "--out", str(out), *CLI_TINY]) == 2
    err = capsys.readouterr().err
    assert f"refused: --out {out} is a file, not a folder" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content", ['{"status": 5, "epoch": 0}', '["finished"]', '{"status": "running", "epoch": "2"}', "{"]
)
def test_a_malformed_status_file_is_named(finished, session_data, content):
    (finished / "seed0" / "status.json").write_text(content)
    with pytest.raises(GridFolderError, match=f"{finished / 'seed0' / 'status.json'} is malformed"):
        run_grid(expand_grid({"base": TINY}), finished, session=quiet(session_data))


def test_temp_files_of_a_killed_process_are_swept(session_data, tmp_path):
    out = tmp_path / "out"
    (out / "seed0").mkdir(parents=True)
    (out / LOCK_NAME).touch()  # a grid killed after taking its lock
    leftovers = [
        out / ".grid.yaml.x1abcdef.tmp",
        out / "seed0" / ".checkpoint.pt.x2_cdefg.tmp",
        out / "seed0" / ".status.json.x3456789.tmp",
    ]
    for path in leftovers:
        path.touch()
    # Not the grid's: a name atomic_write never makes, and a folder that is no run of this grid.
    kept = [out / ".notes.tmp", out / "seed0" / ".Draft.ABC.tmp", out / "mine" / ".x.yaml.x1abcdef.tmp"]
    kept[-1].parent.mkdir()
    for path in kept:
        path.touch()
    assert run_grid(expand_grid({"base": TINY}), out, session=quiet(session_data)) == {"seed0": "finished"}
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)


@pytest.mark.parametrize("where", ["foreign", "inside", "holding"])
def test_an_out_that_is_not_this_grids_folder_is_refused_and_left_untouched(tmp_path, capsys, where):
    other = tmp_path / "other"
    if where == "foreign":  # a user's folder, with a file that looks temporary
        out = tmp_path / "mine"
        out.mkdir()
        (out / ".draft.tmp").write_text("keep me")
    else:
        other.mkdir()
        (other / "grid.yaml").write_text("base: {}\n")
        out = other / "nested" if where == "inside" else tmp_path
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["--config", str(SMOKE), "--out", str(out), *CLI_TINY]) == 2
    assert "refused: --out" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("fresh", [False, True])
def test_a_run_folder_that_is_a_symlink_is_refused_for_training(session_data, tmp_path, fresh):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    (out / LOCK_NAME).touch()
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (out / "seed0").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(GridFolderError, match="symlinks are not followed"):
        run_grid(expand_grid({"base": TINY}), out, fresh=fresh, session=quiet(session_data))
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file of the grid but the summary, plots and diagnoses (write_summary rewrites
    them on every rerun) and the lock's own files."""
    return {
        str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file()
        and p.name not in ("summary.md", "summary.csv", "diagnosis.json")
        and "plots" not in p.parts
        and not p.name.startswith(".fasttrick-grid")
    }


def test_a_finished_grid_rerun_writes_nothing_into_its_runs(finished, session_data):
    before = snapshot(finished)
    time.sleep(0.01)
    lines: list[str] = []
    assert run_grid(expand_grid({"base": TINY}), finished, session=quiet(session_data, lines)) == {"seed0": "finished"}
    assert "seed0: finished already, skipped" in lines
    assert snapshot(finished) == before  # grid.yaml, config.yaml, status.json ... neither rewritten nor replaced


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_finished_grid_reruns_from_a_read_only_folder(finished, session_data):
    paths = [finished, *finished.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        lines: list[str] = []
        assert run_grid(expand_grid({"base": TINY}), finished, session=quiet(session_data, lines)) == {
            "seed0": "finished"
        }
        assert any("is read-only" in line for line in lines)
        with pytest.raises(GridFolderError, match="only a finished grid can be rerun from a read-only folder"):
            run_grid(expand_grid({"base": TINY, "seeds": [0, 1]}), finished, session=quiet(session_data))
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)
