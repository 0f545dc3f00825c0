"""`python -m fasttrick.report DIR`: regenerates a grid's summary and plots; exit code 2 off a grid folder."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_summary import PNG_SIGNATURE, write_synthetic_grid

from fasttrick import report


def test_report_writes_summary_and_plots(tmp_path, capsys):
    grid_dir = write_synthetic_grid(tmp_path / "group2")
    assert report.main([str(grid_dir)]) == 0
    assert str(grid_dir / "summary.md") in capsys.readouterr().out
    assert "| sgd_large_lr | diverged (epoch 3) |" in (grid_dir / "summary.md").read_text()
    assert (grid_dir / "summary.csv").is_file()
    for name in ("val_acc", "train_loss", "lr"):
        assert (grid_dir / "plots" / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)


def test_report_on_a_run_folder_says_where_the_grid_is(tmp_path, capsys):
    grid_dir = write_synthetic_grid(tmp_path / "group2")
    assert report.main([str(grid_dir / "sgd_cosine")]) == report.EXIT_NOT_A_GRID
    error = capsys.readouterr().err
    assert "not a grid folder" in error and f"its grid folder would be {grid_dir}" in error
    assert not (grid_dir / "sgd_cosine" / "summary.md").exists()


def test_report_module_exit_code_on_a_missing_folder(tmp_path):
    """Through `python -m`, as a user or a script calls it (one subprocess: it imports torch, ~2 s)."""
    missing = tmp_path / "nope"
    done = subprocess.run(
        [sys.executable, "-m", "fasttrick.report", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert f"{missing} is not a grid folder: no such folder" in done.stderr


def test_report_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        report.main(["--help"])
    assert exit_.value.code == 0
    assert "python -m fasttrick.report" in capsys.readouterr().out
