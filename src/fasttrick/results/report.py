"""The reproduction report over study folders: each grid's summary, then REPORT.md across them.

from fasttrick.results.report import write_report
write_report(["runs/lr_momentum", "runs/group2"], out_dir="runs")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..runfiles import atomic_write
from .claims import evaluate_claims
from .render import render_report
from .setting import differences
from .study import load_studies
from .summary import write_summary


def default_out_dir(folders: Sequence[Path]) -> Path:
    """Where REPORT.md goes without --out: the folder holding the study folders (their common parent)."""
    return Path(os.path.commonpath([Path(folder).resolve().parent for folder in folders]))


def write_report(folders: Sequence[Path], out_dir: Path | None = None) -> Path:
    """Regenerate each study's summary, plots and diagnosis.json files, then write REPORT.md into out_dir
    (default: `default_out_dir`); returns REPORT.md's path. Raises NotAGridFolder or ReportError."""
    folders = [Path(folder) for folder in folders]
    for folder in folders:
        write_summary(folder)
    studies = load_studies(folders)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(folders)
    setting = {name: differences(study) for name, study in studies.items()}
    path = out_dir / "REPORT.md"
    atomic_write(path, render_report(studies, evaluate_claims(studies), out_dir, setting))
    return path
