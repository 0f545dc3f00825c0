"""Per-run diagnosis: the post's failure modes, stated from a run's per-epoch metrics with the numbers behind them.

The post reads its curves by eye ("stuck near 10%", "validation swings widely", "over-fitting", "lr decayed so
far it stopped learning"). `diagnose` states the same things from the rows of a run's metrics.jsonl:

    diverged       a loss went NaN/inf or blew up (the trainer's "diverged" status counts too)
    not_learning   val acc near chance (10 classes: 10%) for the first epochs, or for the whole run
    unstable       val acc swings: epoch-to-epoch changes spread widely over a window, with real drops
    overfitting    the train/val accuracy gap grows while val loss rises above its minimum
    lr_floor       the lr decayed 3+ orders of magnitude below its peak and stayed there for a real share
                   of the run, cutting off a still-improving val acc or stalling the run early

Every threshold is a field of `Thresholds` (its docstring gives each value's reason); `THRESHOLDS` holds the
defaults. Windows scale with the run's length, so a quick-profile run (10-30 epochs) and a faithful one (200)
are judged alike: a mode whose window does not fit in a short history is reported as not judged, with why,
rather than guessed. Pure functions: no files, no torch.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..runfiles import RunStatus, finite

MODES = ("diverged", "not_learning", "unstable", "overfitting", "lr_floor")
# What a diagnosis says about one mode of one run: the three outcomes are kept apart everywhere.
FLAGGED, HEALTHY, NOT_JUDGED = "flagged", "healthy", "not judged"


@dataclass(frozen=True)
class Thresholds:
    """Every number the diagnoses compare against. Accuracies are fractions (0..1), as in metrics.jsonl.

    not_learning
        chance_acc = 0.10: CIFAR-10 has 10 balanced classes, so a guess scores 10%.
        near_chance_margin = 0.05: "near chance" is at most 15%. The post's too-large L2 hovered at
        10% -> 12% -> 9%; a network that learns anything passes 15% within an epoch or two.
        early_fraction = 0.10, min_early_epochs = 3: "the first K epochs" is the first 10% of the run and at
        least 3 (3 of a 10-30 epoch quick run, 20 of 200): one slow epoch is not "not learning".
    unstable
        The first K epochs (as above) are left out: val acc rises fast there, and a rise is not a swing.
        swing_window_fraction = 0.20, min_swing_window = 4: the window holds 20% of the run's epoch-to-epoch
        changes and at least 4 (4 of 10-20 epochs, 6 of 30, 40 of 200).
        swing_spread = 0.03: the standard deviation of the changes in a window must exceed 3 points. A run
        settling at a constant lr moves by about 1 point an epoch; the post's "swings widely" is several.
        swing_drop = 0.05: and the window must hold a drop of at least 5 points, so a single upward jump (a
        StepLR decay lifts val acc 5-10 points in one epoch) is not taken for a swing.
    overfitting
        Judged over the last window (the same length as unstable's) against the epoch of minimum val loss,
        which must come before that window.
        val_loss_rise = 0.10: the last window's mean val loss is 10%+ above the run's minimum (a mean, so one
        noisy epoch does not trigger it).
        gap_growth = 0.02: and the train-minus-val accuracy gap grew by 2+ points since that minimum.
    lr_floor
        lr_floor_ratio = 1e-3: the floor sits 3 orders of magnitude below the run's peak lr; the post calls
        cosine's 1e-1 -> 1e-4 "too many" orders and says ReduceLROnPlateau without a min_lr stalls late.
        min_floor_fraction = 0.10: the lr must stay under the floor for 10% of the run (and 2+ epochs), so a
        schedule that touches it in its last epoch is not flagged.
        improving_gain = 0.01: "still improving" is a val acc gain of 1+ point over the window before the lr
        crossed the floor. A crossing in the first half of the run counts as stalling early.
    diverged
        diverged_loss = 2 ln 10 = 4.6: a uniform guess over 10 classes costs ln 10 = 2.3; a training loss
        above twice that after the first epoch is a run blowing up, even while still finite.

    Each mode judges only a run long enough for its measure (`shortest`); a shorter run is "not judged" for
    it, never "healthy": unstable and overfitting need the first K epochs plus one window after them (7
    epochs with these values), not_learning and lr_floor need min_early_epochs, diverged one epoch.
    """

    chance_acc: float = 0.10
    near_chance_margin: float = 0.05
    early_fraction: float = 0.10
    min_early_epochs: int = 3
    swing_window_fraction: float = 0.20
    min_swing_window: int = 4
    swing_spread: float = 0.03
    swing_drop: float = 0.05
    val_loss_rise: float = 0.10
    gap_growth: float = 0.02
    lr_floor_ratio: float = 1e-3
    min_floor_fraction: float = 0.10
    improving_gain: float = 0.01
    diverged_loss: float = 2 * math.log(10)

    def early_epochs(self, epochs: int) -> int:
        """K, the number of leading epochs that count as the start of a run of this many epochs."""
        return max(self.min_early_epochs, math.ceil(self.early_fraction * epochs))

    def window(self, epochs: int) -> int:
        """The number of epoch-to-epoch changes (unstable) or epochs (overfitting) in a window."""
        return max(self.min_swing_window, round(self.swing_window_fraction * epochs))

    def judgeable(self, mode: str, epochs: int) -> bool:
        """Whether a history of this many usable epochs holds the measure of mode."""
        if mode in ("unstable", "overfitting"):  # one window after the first K epochs
            return epochs - self.early_epochs(epochs) >= self.window(epochs)
        if mode in ("not_learning", "lr_floor"):
            return epochs >= self.min_early_epochs
        if mode == "diverged":
            return epochs >= 1
        raise ValueError(f"unknown diagnosis mode {mode!r}; one of {', '.join(MODES)}")

    def shortest(self, mode: str) -> int:
        """The shortest run (in epochs) that mode can judge."""
        return next(n for n in itertools.count(1) if self.judgeable(mode, n))


THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Finding:
    """One diagnosed mode: a sentence with the numbers, and the numbers themselves (JSON-ready)."""

    mode: str
    summary: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` found in one run, and which modes its history was too short to judge."""

    epochs: int
    findings: tuple[Finding, ...]
    not_judged: dict[str, str] = field(default_factory=dict)
    thresholds: Thresholds = THRESHOLDS

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(finding.mode for finding in self.findings)

    def outcome(self, mode: str, scope: str | None = None) -> str:
        """FLAGGED (the measure says yes; for not_learning, in that scope when given), NOT_JUDGED (the run is too
        short for the measure) or HEALTHY (the measure was taken and says no)."""
        if any(f.mode == mode and (scope is None or f.evidence.get("scope") == scope) for f in self.findings):
            return FLAGGED
        return NOT_JUDGED if mode in self.not_judged else HEALTHY

    def to_json(self) -> dict[str, Any]:
        """diagnosis.json's content: strict JSON (no NaN), with the thresholds it was judged by and the shortest
        run each mode can judge."""
        return {
            "epochs": self.epochs,
            "diagnoses": [asdict(finding) for finding in self.findings],
            "not_judged": self.not_judged,
            "shortest_judged_run": {mode: self.thresholds.shortest(mode) for mode in MODES},
            "thresholds": asdict(self.thresholds),
        }


def diagnose(
    metrics: Sequence[Mapping[str, Any]], status: str | None = None, thresholds: Thresholds = THRESHOLDS
) -> Diagnosis:
    """Diagnose one run from its metrics rows (metrics.jsonl, in epoch order) and its status, if known.

    Findings come in `MODES` order. Modes that need more epochs than the history holds are listed in
    ``not_judged`` with the reason; a pending run (no rows) is judged on nothing (a trainer's "diverged"
    status still counts).
    """
    findings: list[Finding] = []
    not_judged: dict[str, str] = {}
    checks = {
        "diverged": lambda: _diverged(metrics, status, thresholds),
        "not_learning": lambda: _not_learning(metrics, thresholds),
        "unstable": lambda: _unstable(metrics, thresholds),
        "overfitting": lambda: _overfitting(metrics, thresholds),
        "lr_floor": lambda: _lr_floor(metrics, thresholds),
    }
    for mode, check in checks.items():
        outcome = check()
        if isinstance(outcome, Finding):
            findings.append(outcome)
        elif isinstance(outcome, str):
            not_judged[mode] = outcome
    return Diagnosis(len(metrics), tuple(findings), not_judged, thresholds)


def val_swing(metrics: Sequence[Mapping[str, Any]], thresholds: Thresholds = THRESHOLDS) -> float | None:
    """The largest spread (standard deviation) of val acc's epoch-to-epoch changes over any window after the
    first K epochs: how much a run swings, for comparing runs; None when the history is too short."""
    windows = _swing_windows(metrics, thresholds)
    return max(spread for spread, _, _ in windows) if windows else None


# ----------------------------------------------------------------------------------------------- the modes

Outcome = Finding | str | None  # a finding, the reason it could not be judged, or nothing found


def _diverged(metrics: Sequence[Mapping[str, Any]], status: str | None, t: Thresholds) -> Outcome:
    """The first epoch with a non-finite loss, or a training loss past `Thresholds.diverged_loss` after the
    first epoch; else the trainer's own "diverged" status."""
    if status != RunStatus.DIVERGED and not t.judgeable("diverged", len(metrics)):
        return f"needs {t.shortest('diverged')} finished epoch, has none"
    for index, row in enumerate(metrics):
        for key in ("train_loss", "val_loss"):
            value = row.get(key)
            if value is not None and not math.isfinite(float(value)):
                return Finding(
                    "diverged",
                    f"{key} is {float(value)} at epoch {row['epoch']}",
                    {"epoch": row["epoch"], "metric": key, "status": status},
                )
        loss = finite(row.get("train_loss"))
        if index > 0 and loss is not None and loss > t.diverged_loss:
            return Finding(
                "diverged",
                f"train loss {loss:.3g} at epoch {row['epoch']}, above {t.diverged_loss:.3g} "
                f"({t.diverged_loss / math.log(10):.3g} ln 10, Thresholds.diverged_loss)",
                {"epoch": row["epoch"], "metric": "train_loss", "value": _round(loss), "status": status},
            )
    if status == RunStatus.DIVERGED:
        epoch = metrics[-1]["epoch"] if metrics else 0
        return Finding("diverged", f"the trainer stopped the run as diverged after epoch {epoch}", {"status": status})
    return None


def _not_learning(metrics: Sequence[Mapping[str, Any]], t: Thresholds) -> Outcome:
    scored = _series(metrics, "val_acc")
    if not t.judgeable("not_learning", len(scored)):
        return f"needs {t.shortest('not_learning')} epochs with a val acc, has {len(scored)}"
    ceiling = t.chance_acc + t.near_chance_margin
    accs = [acc for _, acc in scored]
    if max(accs) <= ceiling:
        return Finding(
            "not_learning",
            f"val acc at most {_pct(max(accs))} in all {len(accs)} epochs (chance {_pct(t.chance_acc)})",
            {"scope": "throughout", "epochs": len(accs), "max_val_acc": _round(max(accs)), "ceiling": _round(ceiling)},
        )
    k = t.early_epochs(len(scored))
    if max(accs[:k]) <= ceiling:
        first_above = next(epoch for epoch, acc in scored if acc > ceiling)
        return Finding(
            "not_learning",
            f"val acc at most {_pct(max(accs[:k]))} in the first {k} epochs; above {_pct(ceiling)} from epoch "
            f"{first_above}",
            {
                "scope": "first_epochs",
                "first_epochs": k,
                "max_val_acc_first_epochs": _round(max(accs[:k])),
                "ceiling": _round(ceiling),
                "first_epoch_above": first_above,
            },
        )
    return None


def _unstable(metrics: Sequence[Mapping[str, Any]], t: Thresholds) -> Outcome:
    n = len(_series(metrics, "val_acc"))
    if not t.judgeable("unstable", n):
        return f"needs {t.shortest('unstable')} epochs with a val acc, has {n}"
    windows = _swing_windows(metrics, t)
    swinging = [w for w in windows if w[0] > t.swing_spread and -min(w[2]) >= t.swing_drop]
    if not swinging:
        return None
    spread, first_epoch, changes = max(swinging, key=lambda w: w[0])
    last_epoch = first_epoch + len(changes)
    return Finding(
        "unstable",
        f"val acc's epoch-to-epoch changes spread {_points(spread)} (std) over epochs {first_epoch}-{last_epoch}, "
        f"with a drop of {_points(-min(changes))}",
        {
            "epochs": [first_epoch, last_epoch],
            "spread": _round(spread),
            "largest_drop": _round(-min(changes)),
            "changes": [_round(c) for c in changes],
        },
    )


def _overfitting(metrics: Sequence[Mapping[str, Any]], t: Thresholds) -> Outcome:
    rows = [
        row for row in metrics if all(finite(row.get(key)) is not None for key in ("val_loss", "train_acc", "val_acc"))
    ]
    n = len(rows)
    if not t.judgeable("overfitting", n):
        return f"needs {t.shortest('overfitting')} epochs with val loss and both accuracies, has {n}"
    window = t.window(n)
    lowest = min(range(n), key=lambda i: rows[i]["val_loss"])
    last = rows[-window:]
    if lowest >= n - window:
        return None  # val loss is at its lowest in the last window: not rising
    min_loss = rows[lowest]["val_loss"]
    last_loss = statistics.fmean(row["val_loss"] for row in last)
    rise = last_loss / min_loss - 1 if min_loss > 0 else 0.0
    gap_then = rows[lowest]["train_acc"] - rows[lowest]["val_acc"]
    gap_now = statistics.fmean(row["train_acc"] - row["val_acc"] for row in last)
    if rise < t.val_loss_rise or gap_now - gap_then < t.gap_growth:
        return None
    return Finding(
        "overfitting",
        f"val loss {rise:.0%} above its minimum (epoch {rows[lowest]['epoch']}) over the last {window} epochs; "
        f"train-val accuracy gap {_points(gap_then)} -> {_points(gap_now)}",
        {
            "min_val_loss_epoch": rows[lowest]["epoch"],
            "min_val_loss": _round(min_loss),
            "last_epochs": window,
            "last_val_loss": _round(last_loss),
            "val_loss_rise": _round(rise),
            "gap_at_min": _round(gap_then),
            "gap_last": _round(gap_now),
        },
    )


def _lr_floor(metrics: Sequence[Mapping[str, Any]], t: Thresholds) -> Outcome:
    rows = [row for row in metrics if finite(row.get("lr")) is not None and finite(row.get("val_acc")) is not None]
    n = len(rows)
    if not t.judgeable("lr_floor", n):
        return f"needs {t.shortest('lr_floor')} epochs with an lr and a val acc, has {n}"
    peak = max(row["lr"] for row in rows)
    floor = peak * t.lr_floor_ratio
    crossing = next((i for i, row in enumerate(rows) if row["lr"] < floor), None)
    if crossing is None:
        return None
    epochs_below = n - crossing
    if epochs_below < max(2, math.ceil(t.min_floor_fraction * n)):
        return None
    before = rows[max(0, crossing - t.window(n))]
    at_crossing = rows[crossing]
    gain_before = at_crossing["val_acc"] - before["val_acc"]
    gain_after = rows[-1]["val_acc"] - at_crossing["val_acc"]
    still_improving = gain_before >= t.improving_gain
    early = crossing < n / 2
    if not (still_improving or early):
        return None
    why = "while val acc was still improving" if still_improving else "in the first half of the run"
    return Finding(
        "lr_floor",
        f"lr {at_crossing['lr']:.2g} < {floor:.2g} (peak {peak:.2g} x {t.lr_floor_ratio:g}) from epoch {at_crossing['epoch']}, "
        f"{epochs_below} of {n} epochs, {why}; val acc {_points(gain_before, signed=True)} in the "
        f"{at_crossing['epoch'] - before['epoch']} epochs before, {_points(gain_after, signed=True)} after",
        {
            "peak_lr": _round(peak),
            "floor": _round(floor),
            "epoch_below_floor": at_crossing["epoch"],
            "epochs_below_floor": epochs_below,
            "val_acc_gain_before": _round(gain_before),
            "val_acc_gain_after": _round(gain_after),
            "still_improving": still_improving,
            "crossed_in_first_half": early,
        },
    )


# ------------------------------------------------------------------------------------------------ helpers


def _swing_windows(metrics: Sequence[Mapping[str, Any]], t: Thresholds) -> list[tuple[float, int, list[float]]]:
    """(spread, epoch the window starts from, changes) for every window of epoch-to-epoch val acc changes
    after the first K epochs; empty when there are fewer changes than one window."""
    scored = _series(metrics, "val_acc")
    n = len(scored)
    settled = scored[t.early_epochs(n) - 1 :]  # from epoch K: the first change is K -> K+1
    changes = [b - a for (_, a), (_, b) in itertools.pairwise(settled)]
    width = t.window(n)
    return [
        (statistics.pstdev(changes[i : i + width]), settled[i][0], changes[i : i + width])
        for i in range(len(changes) - width + 1)
    ]


def _series(metrics: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """(epoch, value) for the rows whose value is finite."""
    return [(row["epoch"], value) for row in metrics if (value := finite(row.get(key))) is not None]


def _round(value: float) -> float:
    """4 significant digits: enough to check a threshold, short enough to read (an lr of 2e-7 stays 2e-7)."""
    return float(f"{value:.4g}")


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _points(fraction: float, signed: bool = False) -> str:
    """A difference of accuracies, in percentage points."""
    return f"{100 * fraction:+.1f} points" if signed else f"{100 * fraction:.1f} points"
