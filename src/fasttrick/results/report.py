"""The reproduction report over study folders: each grid's summary, then REPORT.md across them.

from fasttrick.results.report import write_report
write_report(["runs/lr_momentum", "runs/group2"], out_dir="runs")
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..runfiles import atomic_write
from .claims import evaluate_claims
from .render import render_report
from .setting import differences
from .study import ReportError, load_studies
from .summary import write_summary


def default_out_dir(folders: Sequence[Path]) -> Path:
    """Where REPORT.md goes without --out: the folder holding the study folders (their common parent).

    Raises ReportError when that is the filesystem's root (folders from unrelated places, /data/a and
    /scratch/b): a report is not written into /, so --out must say where it goes."""
    parent = Path(os.path.commonpath([Path(folder).resolve().parent for folder in folders]))
    if parent == Path(parent.anchor):
        shown = ", ".join(str(folder) for folder in folders)
        raise ReportError(
            f"the folders ({shown}) have no common parent but {parent}, and REPORT.md is not written there; "
            "name its folder with --out (e.g. --out .)"
        )
    return parent


def write_report(folders: Sequence[Path], out_dir: Path | None = None) -> Path:
    """Regenerate each study's summary, plots and diagnosis.json files, then write REPORT.md into out_dir
    (default: `default_out_dir`); returns REPORT.md's path. Raises NotAGridFolder or ReportError (a folder
    that cannot be written: read-only, or no such place)."""
    folders = [Path(folder) for folder in folders]
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(folders)
    for folder in folders:
        with _writing(folder, f"the summary, plots and diagnoses of {folder} go into it; copy it somewhere writable"):
            write_summary(folder)
    studies = load_studies(folders)
    setting = {name: differences(study) for name, study in studies.items()}
    path = out_dir / "REPORT.md"
    with _writing(out_dir, "REPORT.md goes into it; name another folder with --out"):
        atomic_write(path, render_report(studies, evaluate_claims(studies), out_dir, setting))
    return path


@contextmanager
def _writing(folder: Path, why: str) -> Iterator[None]:
    """OS errors while writing into ``folder`` (read-only, full, not a folder) as a ReportError that says so."""
    try:
        yield
    except OSError as err:
        what = Path(err.filename) if err.filename else folder
        if what.name.startswith(".") and what.name.endswith(".tmp"):  # an atomic write's temp file: its folder
            what = what.parent
        reason = "read-only" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else err.strerror
        raise ReportError(f"cannot write {what} ({reason}): {why}") from err
