"""The report on folders it cannot write into (exit 2 and a message, no traceback), folders from unrelated
places (no REPORT.md in /), and metrics no trainer writes (named as malformed, not shown as 500%)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest
from test_summary import write_synthetic_grid

from fasttrick import report
from fasttrick.results.claims import evaluate_claims
from fasttrick.results.report import default_out_dir
from fasttrick.results.result import malformed
from fasttrick.results.runs import read_grid
from fasttrick.results.study import ReportError, load_studies

from results_helpers import write_lr_momentum


@pytest.fixture
def read_only(monkeypatch):
    """Folders made read-only as the filesystem would (EROFS), whoever runs the test (root ignores chmod)."""
    folders: list[Path] = []
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and any(Path(dir).resolve().is_relative_to(f.resolve()) for f in folders):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return folders


def test_a_read_only_grid_folder_exits_2_with_a_message(tmp_path, capsys, read_only):
    grid = write_synthetic_grid(tmp_path / "group2")
    read_only.append(grid)
    assert report.main([str(grid)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "(read-only)" in err
    assert f"the summary, plots and diagnoses of {grid} go into it; copy it somewhere writable" in err
    assert "Traceback" not in err


def test_a_read_only_out_exits_2_and_the_summaries_are_written(tmp_path, capsys, read_only):
    grid = write_synthetic_grid(tmp_path / "group2")
    out = tmp_path / "published"
    out.mkdir()
    read_only.append(out)
    assert report.main([str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out} (read-only): REPORT.md goes into it; name another folder with --out" in err
    assert (grid / "summary.md").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_grid_folder_exits_2(tmp_path, capsys):
    grid = write_synthetic_grid(tmp_path / "group2")
    modes = {p: p.stat().st_mode for p in [grid, *grid.iterdir()] if p.is_dir()}
    for p in modes:
        p.chmod(0o555)
    try:
        assert report.main([str(grid)]) == 2
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert "read-only" in capsys.readouterr().err


def test_folders_whose_only_common_parent_is_root_need_out(tmp_path):
    with pytest.raises(ReportError, match=r"no common parent but /.*--out"):
        default_out_dir([Path("/a/grid"), Path("/b/grid")])
    assert default_out_dir([tmp_path / "a", tmp_path / "b"]) == tmp_path.resolve()
    assert default_out_dir([Path("/data/grid")]) == Path("/data")


def test_report_over_unrelated_folders_writes_nothing_into_root(tmp_path, capsys, monkeypatch):
    grid = write_synthetic_grid(tmp_path / "group2")
    monkeypatch.setattr("fasttrick.results.report.os.path.commonpath", lambda paths: "/")
    assert report.main([str(grid)]) == 2
    assert "name its folder with --out" in capsys.readouterr().err
    assert not (grid / "summary.md").exists()  # refused before anything was written
    assert report.main([str(grid), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").is_file()


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ({"epoch": 3, "val_acc": 5.0}, "val_acc 5.0 is not in 0..1"),
        ({"epoch": 3, "train_acc": -0.1}, "train_acc -0.1 is not in 0..1"),
        ({"epoch": -2, "val_acc": 0.5}, "epoch -2 is not a whole number >= 0"),
        ({"epoch": 3, "val_acc": "0.93"}, "val_acc '0.93' is not a number"),
        ({"epoch": 3, "lr": True}, "lr True is not a number"),
        ({"epoch": 3, "elapsed_seconds": -5}, "elapsed_seconds -5 is not >= 0"),
        ({"epoch": 3, "val_loss": float("nan"), "val_acc": 0.1}, None),  # a diverged run's NaN is a measurement
        ({"epoch": 3, "val_acc": 1.0, "train_loss": 0}, None),
    ],
)
def test_malformed_rows(row, why):
    assert malformed(row) == why


def test_implausible_metrics_are_named_not_shown(tmp_path, capsys):
    grid = write_synthetic_grid(tmp_path / "group2")
    run_dir = next(p for p in sorted(grid.iterdir()) if (p / "metrics.jsonl").is_file())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows[0]["val_acc"] = 5.0
    rows[1]["train_loss"] = "0.7"
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "status.json").write_text(json.dumps({"status": "finished", "epoch": -4, "message": None}))
    with pytest.warns(UserWarning) as caught:
        records = {r.name: r for r in read_grid(grid)}
    messages = " ".join(str(w.message) for w in caught)
    assert "epoch 1 skipped as malformed: val_acc 5.0 is not in 0..1" in messages
    assert "epoch 2 skipped as malformed: train_loss '0.7' is not a number" in messages
    assert "epoch -4 is malformed" in messages
    record = records[run_dir.name]
    assert [r["epoch"] for r in record.metrics] == [r["epoch"] for r in rows[2:]]
    assert record.status_epoch is None
    with pytest.warns(UserWarning):
        assert report.main([str(grid)]) == 0
    assert "500.00%" not in (grid / "summary.md").read_text()


def test_claims_refuse_a_group_whose_seeds_repeat(tmp_path):
    folder = write_lr_momentum(tmp_path / "lr_momentum")
    assert evaluate_claims(load_studies([folder]))[0].verdict == "confirmed"
    for seed in (0, 1):  # what `--set seed=7` did to a grid of two seeds: both runs trained with seed 7
        config_file = folder / f"lr0.2-m0.9-seed{seed}" / "config.yaml"
        config_file.write_text(config_file.read_text().replace(f"seed: {seed}", "seed: 7"))
    verdict = evaluate_claims(load_studies([folder]))[0]
    assert verdict.verdict == "inconclusive"
    assert "runs lr0.2-m0.9-seed0, lr0.2-m0.9-seed1 were all trained with seed 7" in verdict.reason
    assert report.main([str(folder)]) == 0
    assert "| 7, 7 (repeated: no spread over seeds) |" in (tmp_path / "REPORT.md").read_text()
