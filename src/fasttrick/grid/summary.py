"""Results of a grid, read from its run folders.

`run_result` turns one run's per-epoch metrics into its headline numbers (the trainer stores them as
the run's result.json); `write_summary` reads every run folder of a grid and writes, beside them:

    summary.md     the table a person reads (percent, human durations, notes on what each column means),
                   with each run's diagnoses (fasttrick.grid.diagnosis) and the evidence for them
    summary.csv    the same numbers unformatted (fractions, seconds), for pandas or a spreadsheet
    plots/         val_acc.png, train_loss.png, lr.png: per epoch, runs overlaid, like the post's figures
    <run>/diagnosis.json   each run's diagnosis, recomputed (the runner writes it when a run ends)

Every number is recomputed from metrics.jsonl, the truth the trainer appends to after each epoch, so a
running or killed run is summarised as far as it got.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .diagnosis import Diagnosis, diagnose

# Accuracy milestones the table times: 90% is roughly where the post's runs separate, 93% is the target
# for the best quick run (the post's best, plateau on max, reached 0.935).
MILESTONES = (0.90, 0.93)

GRID_FILE = "grid.yaml"
# A folder under the grid folder is a run folder when the trainer has written any of these in it.
RUN_MARKERS = ("config.yaml", "status.json", "metrics.jsonl")


class NotAGridFolder(ValueError):
    """The folder is not a grid's output folder (no grid.yaml, or no run folders in it yet)."""


def milestone_keys(milestone: float) -> tuple[str, str]:
    """The result keys of one milestone: 0.93 -> ("epochs_to_93", "seconds_to_93")."""
    percent = round(milestone * 100)
    return f"epochs_to_{percent}", f"seconds_to_{percent}"


RESULT_KEYS = (
    "best_val_acc",
    "best_epoch",
    "final_val_acc",
    "epochs",
    *(key for milestone in MILESTONES for key in milestone_keys(milestone)),
    "images_per_s",
    "wall_seconds",
    "status",
)


def run_result(metrics: Sequence[Mapping[str, Any]], status: str) -> dict[str, Any]:
    """One run's headline numbers from its per-epoch metrics (the rows of metrics.jsonl, in order).

    Returns a dict with `RESULT_KEYS`:

    - ``best_val_acc``, ``best_epoch``: the highest val_acc (fraction 0..1) of any epoch and the first
      epoch that reached it.
    - ``final_val_acc``: the last epoch's val_acc, which is what the run ends with.
    - ``epochs``: the number of the last finished epoch (0 before the first).
    - ``epochs_to_90``, ``seconds_to_90``, ``epochs_to_93``, ``seconds_to_93``: the first epoch whose
      val_acc >= 0.90 / 0.93, and the run's elapsed_seconds at the end of it; None if never reached.
    - ``images_per_s``: mean training throughput over the epochs after the first, which pays
      torch.compile and warm-up; the first epoch's own value when it is the only one.
    - ``wall_seconds``: elapsed_seconds at the end of the last epoch.
    - ``status``: passed through ("finished", "diverged", ...).

    Non-finite values (NaN/inf from a diverged run) count as missing, and a number that cannot be
    computed (no epochs, every value missing) is None, so the result is always valid strict JSON.
    """
    val_acc = [_finite(row.get("val_acc")) for row in metrics]
    scored = [(acc, row["epoch"]) for acc, row in zip(val_acc, metrics, strict=True) if acc is not None]
    best_val_acc, best_epoch = max(scored, key=lambda scored_epoch: scored_epoch[0]) if scored else (None, None)
    result: dict[str, Any] = {
        "best_val_acc": best_val_acc,
        "best_epoch": best_epoch,
        "final_val_acc": val_acc[-1] if metrics else None,
        "epochs": metrics[-1]["epoch"] if metrics else 0,
    }
    for milestone in MILESTONES:
        epochs_key, seconds_key = milestone_keys(milestone)
        reached = next(
            (row for acc, row in zip(val_acc, metrics, strict=True) if acc is not None and acc >= milestone), None
        )
        result[epochs_key] = reached["epoch"] if reached else None
        result[seconds_key] = _finite(reached.get("elapsed_seconds")) if reached else None
    steady_epochs = metrics[1:] or metrics
    throughput = [x for x in (_finite(row.get("images_per_s")) for row in steady_epochs) if x is not None]
    result["images_per_s"] = sum(throughput) / len(throughput) if throughput else None
    result["wall_seconds"] = _finite(metrics[-1].get("elapsed_seconds")) if metrics else None
    result["status"] = status
    return result


@dataclass(frozen=True)
class RunRecord:
    """What a run folder holds, as far as the summary needs it."""

    name: str
    status: str
    status_epoch: int | None
    message: str | None
    metrics: list[dict[str, Any]]

    @property
    def result(self) -> dict[str, Any]:
        return run_result(self.metrics, self.status)

    @cached_property
    def diagnosis(self) -> Diagnosis:
        """The run's failure modes, from its metrics (and its status: the trainer's "diverged" counts)."""
        return diagnose(self.metrics, self.status)

    @property
    def label(self) -> str:
        """The run's name, with its status when it is not a plain finished run (plot legends)."""
        return self.name if self.status == "finished" else f"{self.name} ({self.status})"


def read_grid(grid_dir: Path) -> list[RunRecord]:
    """Every run folder of a grid, in the grid's order (grid.yaml), then any others by name.

    Raises `NotAGridFolder` when grid_dir has no grid.yaml or no run folder yet.
    """
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise NotAGridFolder(f"{grid_dir} is not a grid folder: no such folder")
    if not (grid_dir / GRID_FILE).is_file():
        hint = ""
        if any((grid_dir / marker).exists() for marker in RUN_MARKERS):
            hint = f"; it looks like a run folder, its grid folder would be {grid_dir.parent}"
        raise NotAGridFolder(f"{grid_dir} is not a grid folder: no {GRID_FILE} in it{hint}")
    run_dirs = {d.name: d for d in grid_dir.iterdir() if d.is_dir() and any((d / m).exists() for m in RUN_MARKERS)}
    if not run_dirs:
        raise NotAGridFolder(f"{grid_dir} has a {GRID_FILE} but no run folders yet: no run has started")
    grid_order = [name for name in _run_names_in_grid_file(grid_dir / GRID_FILE) if name in run_dirs]
    names = grid_order + sorted(run_dirs.keys() - set(grid_order))
    return [_read_run(run_dirs[name]) for name in names]


def write_summary(grid_dir: Path) -> Path:
    """Write summary.md, summary.csv, plots/*.png and each run's diagnosis.json for the grid in grid_dir;
    returns summary.md's path.

    Every run folder gets a row, including runs that are pending, running, diverged or failed; every run
    with a finished epoch gets its diagnosis.json rewritten from its metrics. Each file is written to a temporary file and renamed over the old one, so a reader never sees half a
    file. Raises `NotAGridFolder` when grid_dir has no grid.yaml or no run folder yet.
    """
    # matplotlib costs ~0.4 s to import; the trainer imports run_result at start-up and needs no plots.
    from . import plots

    grid_dir = Path(grid_dir)
    runs = read_grid(grid_dir)
    grid_name = grid_dir.resolve().name  # "." has no name of its own
    results = {run.name: run.result for run in runs}
    for run in runs:
        if run.metrics:
            diagnosis_json = json.dumps(run.diagnosis.to_json(), indent=2) + "\n"
            write_file_atomically(grid_dir / run.name / "diagnosis.json", diagnosis_json.encode())
    summary_path = grid_dir / "summary.md"
    write_file_atomically(summary_path, render_markdown(grid_name, runs, results).encode())
    write_file_atomically(grid_dir / "summary.csv", render_csv(runs, results).encode())
    curves = {run.label: run.metrics for run in runs}
    for name, make_figure in plots.FIGURES.items():
        write_file_atomically(grid_dir / "plots" / f"{name}.png", plots.png_bytes(make_figure(curves, grid_name)))
    return summary_path


MARKDOWN_COLUMNS = (
    "run",
    "status",
    "epochs",
    "best val acc (%)",
    "epoch of best",
    "final val acc (%)",
    *(f"{label} to {round(m * 100)}%" for m in MILESTONES for label in ("epochs", "time")),
    "images/s",
    "wall time",
    "diagnoses",
)

MARKDOWN_NOTES = f"""\
- **best val acc / epoch of best**: the highest validation accuracy of any epoch, and the first epoch
  that reached it. **final val acc**: the last finished epoch's, what the run ends with.
- **epochs / time to {" and ".join(f"{round(m * 100)}%" for m in MILESTONES)}**: the first epoch whose validation accuracy reached
  it, and the run's wall time at the end of that epoch; - : not reached.
- **images/s**: training throughput, mean over the epochs after the first (which pays torch.compile).
- **wall time**: the run's wall time (training and evaluation) at the end of its last finished epoch.
- Non-finite values (a diverged run's NaN/inf) count as missing; the plots mark the epoch a run went
  non-finite with a dotted line.
- **diagnoses**: the failure modes found in the run's metrics (diverged, not_learning, unstable,
  overfitting, lr_floor; thresholds in fasttrick.grid.diagnosis.Thresholds); the evidence is below the
  table and in each run's diagnosis.json.
"""


def render_markdown(title: str, runs: Sequence[RunRecord], results: Mapping[str, Mapping[str, Any]]) -> str:
    """summary.md: a headline, the table, what the columns mean, and each run's status message."""
    counts = Counter(run.status for run in runs)
    lines = [f"# Grid summary: {title}", ""]
    noun = "run" if len(runs) == 1 else "runs"
    lines.append(f"{len(runs)} {noun}: " + ", ".join(f"{count} {status}" for status, count in counts.items()) + ".")
    scored = [run for run in runs if results[run.name]["best_val_acc"] is not None]
    if scored:
        best = max(scored, key=lambda run: results[run.name]["best_val_acc"])
        result = results[best.name]
        lines.append(
            f"Best: **{best.name}**, {_percent(result['best_val_acc'])}% validation accuracy at epoch "
            f"{result['best_epoch']} of {result['epochs']}."
        )
    lines += ["", "| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|:---|:---|" + "---:|" * (len(MARKDOWN_COLUMNS) - 2)]
    for run in runs:
        lines.append("| " + " | ".join(_markdown_row(run, results[run.name])) + " |")
    lines += ["", MARKDOWN_NOTES.rstrip(), "", "## Diagnoses", "", *render_diagnoses(runs)]
    messages = [f"- {run.name} ({run.status}): {run.message}" for run in runs if run.message]
    if messages:
        lines += ["", "Status messages:", "", *messages]
    return "\n".join(lines) + "\n"


def render_diagnoses(runs: Sequence[RunRecord]) -> list[str]:
    """Markdown lines: each diagnosed run's findings with their evidence, or a line saying there are none."""
    lines = []
    for run in runs:
        for finding in run.diagnosis.findings:
            lines.append(f"- **{run.name}**: `{finding.mode}`: {finding.summary}")
    return lines or ["No run shows a failure mode."]


def render_csv(runs: Sequence[RunRecord], results: Mapping[str, Mapping[str, Any]]) -> str:
    """summary.csv: one row per run, `RESULT_KEYS` unformatted (accuracies as fractions, seconds; empty = None),
    then ``diagnoses``: the run's diagnosed modes separated by ';' (empty: none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", *RESULT_KEYS, "diagnoses"])
    for run in runs:
        result = results[run.name]
        cells = ["" if result[key] is None else result[key] for key in RESULT_KEYS]
        writer.writerow([run.name, *cells, ";".join(run.diagnosis.modes)])
    return buffer.getvalue()


def _markdown_row(run: RunRecord, result: Mapping[str, Any]) -> list[str]:
    status = run.status
    if run.status != "finished" and run.status_epoch:
        status += f" (epoch {run.status_epoch})"
    cells = [
        run.name,
        status,
        str(result["epochs"]),
        _percent(result["best_val_acc"]),
        _or_dash(result["best_epoch"]),
        _percent(result["final_val_acc"]),
    ]
    for milestone in MILESTONES:
        epochs_key, seconds_key = milestone_keys(milestone)
        cells += [_or_dash(result[epochs_key]), _duration(result[seconds_key])]
    images_per_s = result["images_per_s"]
    cells += ["-" if images_per_s is None else f"{images_per_s:,.0f}", _duration(result["wall_seconds"])]
    cells.append(", ".join(run.diagnosis.modes) or "-")
    return cells


def _read_run(run_dir: Path) -> RunRecord:
    metrics = _read_metrics(run_dir / "metrics.jsonl")
    status_file = run_dir / "status.json"
    state: dict[str, Any] = {}
    if status_file.is_file():
        try:
            state = json.loads(status_file.read_text())
        except json.JSONDecodeError as error:
            warnings.warn(f"{status_file}: unreadable ({error}); status shown as unknown", stacklevel=3)
            state = {"status": "unknown"}
    default_status = "unknown" if metrics else "pending"
    return RunRecord(
        name=run_dir.name,
        status=state.get("status", default_status),
        status_epoch=state.get("epoch"),
        message=state.get("message"),
        metrics=metrics,
    )


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows. A line that does not parse (the trainer killed mid-append) is skipped with a
    warning rather than losing the whole run's summary. Python's json reads the NaN/Infinity it writes."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            warnings.warn(f"{path}:{number}: skipped, not JSON ({error})", stacklevel=4)
    return rows


def _run_names_in_grid_file(path: Path) -> list[str]:
    """Run names in grid.yaml's order. The expanded grid is read as a list of resolved run configs, or
    a mapping holding such a list under ``runs``, or a mapping of run name -> config."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        warnings.warn(f"{path}: unreadable ({error}); runs listed by name", stacklevel=4)
        return []
    if isinstance(document, dict) and isinstance(document.get("runs"), list | dict):
        document = document["runs"]
    if isinstance(document, dict):
        return [str(name) for name in document]
    if isinstance(document, list):
        return [str(run["name"]) for run in document if isinstance(run, dict) and "name" in run]
    return []


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename it over path (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates the file 0600; these are results others read
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}"


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    """42.1 s, 3m 05s, 1h 02m: seconds for short runs, coarser units for long ones."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
