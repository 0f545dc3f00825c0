"""A grid's summary, written beside its run folders.

`write_summary` reads every run folder of a grid (fasttrick.results.runs) and writes:

    summary.md     the table a person reads (percent, human durations, notes on what each column means),
                   with each run's diagnoses (fasttrick.results.diagnosis) and the evidence for them
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
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runfiles import RunStatus, atomic_write, format_duration
from .result import MILESTONES, RESULT_KEYS, milestone_keys
from .runs import RunRecord, own_folder, read_grid


def write_summary(grid_dir: Path) -> Path:
    """Write summary.md, summary.csv, plots/*.png and each run's diagnosis.json for the grid in grid_dir;
    returns summary.md's path.

    Every run folder gets a row, including runs that are pending, running, diverged or failed; every run
    with a finished epoch gets its diagnosis.json rewritten from its metrics. Each file is written atomically
    (fasttrick.runfiles.atomic_write), so a reader never sees half a file. Raises `NotAGridFolder` when grid_dir has no grid.yaml or no run folder yet, or plots/ is a symlink.
    """
    # matplotlib costs ~0.4 s to import; the runner imports this module at start-up and plots only at the end.
    from . import plots

    grid_dir = Path(grid_dir)
    runs = read_grid(grid_dir)
    grid_name = grid_dir.resolve().name  # "." has no name of its own
    results = {run.name: run.result for run in runs}
    for run in runs:
        if run.metrics:
            diagnosis_json = json.dumps(run.diagnosis.to_json(), indent=2) + "\n"
            atomic_write(grid_dir / run.name / "diagnosis.json", diagnosis_json)
    summary_path = grid_dir / "summary.md"
    atomic_write(summary_path, render_markdown(grid_name, runs, results))
    atomic_write(grid_dir / "summary.csv", render_csv(runs, results))
    curves = {run.label: run.metrics for run in runs}
    plots_dir = own_folder(grid_dir / "plots")
    for name, make_figure in plots.FIGURES.items():
        atomic_write(plots_dir / f"{name}.png", plots.png_bytes(make_figure(curves, grid_name)))
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
  overfitting, lr_floor; thresholds in fasttrick.results.diagnosis.Thresholds); the evidence is below the
  table and in each run's diagnosis.json.
"""


def render_markdown(title: str, runs: Sequence[RunRecord], results: Mapping[str, Mapping[str, Any]]) -> str:
    """summary.md: a headline, the table, what the columns mean, and each run's status message."""
    counts = Counter(run.status for run in runs)
    lines = [f"# Grid summary: {title}", ""]
    noun = "run" if len(runs) == 1 else "runs"
    lines.append(f"{len(runs)} {noun}: " + ", ".join(f"{count} {status}" for status, count in counts.items()) + ".")
    lines.append(_best_line(runs, results))
    lines += ["", "| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|:---|:---|" + "---:|" * (len(MARKDOWN_COLUMNS) - 2)]
    for run in runs:
        lines.append("| " + " | ".join(_markdown_row(run, results[run.name])) + " |")
    lines += ["", MARKDOWN_NOTES.rstrip(), "", "## Diagnoses", "", *render_diagnoses(runs)]
    messages = [f"- {run.name} ({run.status}): {run.message}" for run in runs if run.message]
    if messages:
        lines += ["", "Status messages:", "", *messages]
    return "\n".join(lines) + "\n"


def _best_line(runs: Sequence[RunRecord], results: Mapping[str, Mapping[str, Any]]) -> str:
    """The headline's best run: the highest best val acc among runs that did not diverge (a diverged run's
    accuracy before it blew up is not a result anyone should pick)."""
    scored = [
        run
        for run in runs
        if results[run.name]["best_val_acc"] is not None
        and run.status != RunStatus.DIVERGED
        and "diverged" not in run.diagnosis.modes
    ]
    if not scored:
        return "Best: none yet (no run that did not diverge has a val acc)."
    best = max(scored, key=lambda run: results[run.name]["best_val_acc"])
    result = results[best.name]
    return (
        f"Best (of the runs that did not diverge): **{best.name}**, {_percent(result['best_val_acc'])}% "
        f"validation accuracy at epoch {result['best_epoch']} of {result['epochs']}."
    )


def render_diagnoses(runs: Sequence[RunRecord]) -> list[str]:
    """Markdown lines: each diagnosed run's findings with their evidence, then each run's modes that its history
    was too short to judge (not judged is not healthy); a line saying so when there is neither."""
    lines = [f"- **{run.name}**: `{f.mode}`: {f.summary}" for run in runs for f in run.diagnosis.findings]
    for run in runs:
        if run.metrics and run.diagnosis.not_judged:
            reasons = "; ".join(f"`{mode}` {why}" for mode, why in run.diagnosis.not_judged.items())
            lines.append(f"- **{run.name}**: not judged (too short to tell, not healthy): {reasons}")
    return lines or ["No run shows a failure mode, and every mode was judged."]


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
    if run.status != RunStatus.FINISHED and run.status_epoch:
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
        cells += [_or_dash(result[epochs_key]), format_duration(result[seconds_key])]
    images_per_s = result["images_per_s"]
    cells += ["-" if images_per_s is None else f"{images_per_s:,.0f}", format_duration(result["wall_seconds"])]
    cells.append(", ".join(run.diagnosis.modes) or "-")
    return cells


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}"


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)
