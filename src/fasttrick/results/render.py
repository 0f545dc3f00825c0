"""REPORT.md's text: the setting banner, the claims with their verdicts and power, a table per study."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .claims import Verdict
from .diagnosis import FLAGGED, MODES, NOT_JUDGED
from .evidence import CLEAR_MARGIN, MARGIN, OUTCOMES, pct
from .select import Studies
from .study import EARLY, EARLY_SHARE, FINAL, Group, Stat
from .summary import render_diagnoses

PLOT_NAMES = ("val_acc", "train_loss", "lr")
STUDY_COLUMNS = (
    "config",
    "seeds",
    "status",
    "final val acc (%)",
    "best val acc (%)",
    "epoch of best",
    f"val acc at {EARLY_SHARE:.0%} (%)",
    "epochs to 90%",
    "epochs to 93%",
    "diagnoses (seeds)",
)

READING_NOTES = f"""\
- Accuracies are on CIFAR-10's test split, the only held-out set: it serves as validation too, so the
  **best** epoch is picked on it and is optimistic. Verdicts never use it: they use the **{FINAL}**, or
  for speed the **{EARLY}** (epoch ceil({EARLY_SHARE} x epochs)); each verdict names its number.
- Several seeds: mean ± sample standard deviation over the seeds (runs named `<config>-seed<N>`).
- "A beats B" needs a difference above {100 * MARGIN:.1f} points or the two seed spreads summed, whichever is
  larger; "clearly" (claim 6) above {100 * CLEAR_MARGIN:.0f} point. A smaller difference is within noise.
- Three outcomes: **confirmed** (the measure exists and says yes), **refuted** (it exists and says no),
  **inconclusive** (it cannot be taken: a study, config or number missing, a run too short for its diagnosis,
  a difference within noise; the reason is given). Each verdict states its power: seeds per config and epochs.
- Diagnoses: fasttrick.results.diagnosis (thresholds in its `Thresholds`), per run, from its metrics; a run too
  short for a mode is "not judged" for it, which is not healthy.
"""


def render_report(
    studies: Studies, verdicts: Sequence[Verdict], out_dir: Path, setting: Mapping[str, list[str]]
) -> str:
    """REPORT.md. ``setting``: per study, how its runs differ from the post's (fasttrick.results.setting)."""
    counts = {v: sum(x.verdict == v for x in verdicts) for v in OUTCOMES}
    scaled = any(setting.values())
    lines = ["# Reproduction report", "", *_banner(setting)]
    lines += [
        "Studies: " + ", ".join(f"{s.name} (`{relative(s.folder, out_dir)}`)" for s in studies.values()) + ".",
        "Written by `python -m fasttrick.report` from the run folders' metrics.jsonl.",
        f"The post's nine claims{' in this setting' if scaled else ''}: "
        + ", ".join(f"{n} {v}" for v, n in counts.items())
        + ".",
        "",
        READING_NOTES.rstrip(),
        "",
        "## The post's claims" + (" (in this setting, not the post's)" if scaled else ""),
        "",
        "| # | claim | verdict | number used | power |",
        "|---:|:---|:---|:---|:---|",
        *(f"| {v.claim} | {v.text} | **{v.verdict}**{_mark(scaled)} | {v.uses} | {v.power} |" for v in verdicts),
    ]
    for v in verdicts:
        lines += ["", f"### Claim {v.claim}: {v.verdict}{_mark(scaled)}", "", f"> {v.text}", "", v.reason + "."]
        lines += ["", f"Power: {v.power}."]
        if v.evidence:
            lines += ["", *_group_table(v.evidence, with_study=True)]
    for study in studies.values():
        lines += ["", f"## Study: {study.name}", "", f"Folder `{relative(study.folder, out_dir)}`.", ""]
        lines += _group_table(study.groups, with_study=False)
        lines += [""] + [
            f"![{name} of {study.name}]({relative(study.folder / 'plots' / f'{name}.png', out_dir)})"
            for name in PLOT_NAMES
        ]
        lines += ["", "Diagnoses:", "", *render_diagnoses(study.records)]
    return "\n".join(lines) + "\n"


def _banner(setting: Mapping[str, list[str]]) -> list[str]:
    if not any(setting.values()):
        return []
    lines = ["> **Not the post's setting.** These runs differ from the studies' own configs:"]
    lines += [f"> - {study}: " + "; ".join(found) for study, found in setting.items() if found]
    lines += ["> Every verdict below is about this setting, not about the post's.", ""]
    return lines


def _mark(scaled: bool) -> str:
    return " (this setting)" if scaled else ""


def _group_table(groups: Iterable[Group], with_study: bool) -> list[str]:
    columns = ("study", *STUDY_COLUMNS) if with_study else STUDY_COLUMNS
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(":---" if i < 3 else "---:" for i in range(len(columns))) + "|",
    ]
    for group in groups:
        statuses = [run.record.status for run in group.runs]
        status = (
            ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
            if len(set(statuses)) > 1
            else statuses[0]
        )
        cells = [
            f"{group.name}: {describe(group.config)}",
            ", ".join(str(seed) for seed in group.seeds)
            + (" (repeated: no spread over seeds)" * bool(group.repeated_seeds)),
            status,
            pct(group.stat("final_val_acc")),
            pct(group.stat("best_val_acc")),
            _epochs(group.stat("best_epoch"), len(group.runs)),
            pct(group.stat("early_val_acc")),
            _epochs(group.stat("epochs_to_90"), len(group.runs)),
            _epochs(group.stat("epochs_to_93"), len(group.runs)),
            _diagnoses(group),
        ]
        lines.append("| " + " | ".join(([group.study] if with_study else []) + cells) + " |")
    return lines


def _diagnoses(group: Group) -> str:
    """Modes flagged in k of n seeds, and modes not judged (too short) in k of n seeds."""
    n = len(group.runs)
    cells = []
    for mode in MODES:
        outcomes = group.outcomes(mode)
        if FLAGGED in outcomes:
            cells.append(f"{mode} {outcomes.count(FLAGGED)}/{n}")
        if NOT_JUDGED in outcomes and group.epochs != [0] * n:
            cells.append(f"{mode} not judged {outcomes.count(NOT_JUDGED)}/{n}")
    return ", ".join(cells) or "-"


def _epochs(stat: Stat | None, seeds: int) -> str:
    """Mean epoch (± std); with "(k/n)" when only k of the n seeds reached it."""
    if stat is None:
        return "-"
    text = f"{stat.mean:.1f}" + (f" ± {stat.std:.1f}" if stat.std is not None else "")
    return text if stat.n == seeds else f"{text} ({stat.n}/{seeds})"


def describe(config: Mapping[str, Any]) -> str:
    """The settings the post varies, from a flattened config: optimizer, lr, momentum, weight decay, schedule,
    warm-up, epochs (schedule epochs as the config gives them: whole epochs or a share of the run)."""
    parts = [str(config.get("optimizer.name", "?")), f"lr {config.get('optimizer.lr')}"]
    if config.get("optimizer.momentum") is not None:
        parts.append(f"m {config['optimizer.momentum']}")
    parts.append(f"wd {config.get('optimizer.weight_decay')}")
    scheduler = config.get("scheduler.name", "?")
    details = {
        "plateau": ("mode", "monitor", "min_lr"),
        "cosine": ("eta_min",),
        "cosine_restarts": ("t_0", "eta_min"),
        "step": ("step_size", "gamma"),
        "multistep": ("milestones", "gamma"),
    }.get(scheduler, ())
    parts.append(" ".join([scheduler, *(f"{key} {config.get(f'scheduler.{key}')}" for key in details)]))
    if config.get("warmup.epochs"):
        parts.append(f"warm-up {config['warmup.epochs']}")
    parts.append(f"{config.get('train.epochs')} epochs")
    return ", ".join(parts)


def relative(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())
