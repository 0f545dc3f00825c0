"""The reproduction report: several study folders (grid output folders) in one REPORT.md.

    from fasttrick.grid.study_report import write_report
    write_report(["runs/lr_momentum", "runs/group2"], out_dir="runs")

For each study: a table with one row per config, mean ± std over its seeds (runs grouped by name with the
``-seed<N>`` suffix removed), links to the study's plots, and every run's diagnoses. Then, for each of the
post's nine claims (../shared/seed/EXPERIMENTS.md), a verdict computed by explicit code: which study, which
runs (selected by the values in their config.yaml, never by name), which comparison.

Which number: CIFAR-10's test split is the only held-out set, so it is both "validation" and "test".
The best epoch is chosen on it and is optimistic; verdicts therefore use the **final-epoch** val acc
(claims about ending accuracy) or the val acc at the epoch a quarter into the run (claims about speed),
never the best epoch, which the tables show beside them for reference. Each verdict says which it used.

A comparison "A beats B" needs the difference of the means to exceed `margin` (half a point, or the sum of
the two configs' seed standard deviations when larger); a smaller difference is within noise and makes
that part inconclusive. A claim of several parts is refuted when any part is, confirmed when all are.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .diagnosis import val_swing
from .summary import GRID_FILE, RunRecord, read_grid, render_diagnoses, write_file_atomically, write_summary

SEED_SUFFIX = re.compile(r"-seed\d+$")
# "Converges fast" is read off the val acc at the epoch a quarter into the run (epoch 8 of 30, 50 of 200):
# late enough that the first noisy epochs are past, early enough that every config is still far from its end.
EARLY_SHARE = 0.25
# Half a point: the seed-to-seed spread of a finished ResNet-18/CIFAR-10 run is about 0.1-0.2 points, more
# early in training; a difference below this is not evidence either way.
MARGIN = 0.005
# Claim 6 says "clearly worse": at least a full point.
CLEAR_MARGIN = 0.01
# Settings that change where or how fast a run computes, not what it learns: ignored when pairing configs.
IGNORED_FOR_PAIRING = (
    "seed",
    "data.root",
    "data.loader",
    "train.device",
    "train.compile",
    "train.compile_mode",
    "train.compile_backend",
)
PLOT_NAMES = ("val_acc", "train_loss", "lr")

CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"
FINAL = "final-epoch val acc"
EARLY = f"val acc at the epoch {EARLY_SHARE:.0%} into the run"


class ReportError(ValueError):
    """The folders cannot make one report (two folders hold the same study)."""


# ------------------------------------------------------------------------------------------ reading studies


@dataclass(frozen=True)
class Run:
    record: RunRecord
    config: dict[str, Any]  # the run's config.yaml, flattened to dotted keys ("optimizer.lr")

    @cached_property
    def numbers(self) -> dict[str, float | None]:
        """The per-run numbers groups average: accuracies and epochs from the result, plus the early val
        acc and the val swing (fasttrick.grid.diagnosis.val_swing)."""
        result = self.record.result
        planned = self.config.get("train.epochs") or result["epochs"]
        early_epoch = max(1, math.ceil(EARLY_SHARE * planned))
        early = next((row.get("val_acc") for row in self.record.metrics if row["epoch"] == early_epoch), None)
        return {
            "final_val_acc": result["final_val_acc"],
            "best_val_acc": result["best_val_acc"],
            "best_epoch": result["best_epoch"],
            "epochs_to_90": result["epochs_to_90"],
            "epochs_to_93": result["epochs_to_93"],
            "early_val_acc": early if early is not None and math.isfinite(early) else None,
            "swing": val_swing(self.record.metrics),
        }


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # sample standard deviation over seeds; None with one value
    n: int


@dataclass(frozen=True)
class Group:
    """One config of a study over its seeds."""

    study: str
    name: str
    runs: tuple[Run, ...]

    @property
    def config(self) -> dict[str, Any]:
        return {key: value for key, value in self.runs[0].config.items() if key != "seed"}

    @property
    def seeds(self) -> list[Any]:
        return [run.config.get("seed") for run in self.runs]

    @property
    def done(self) -> bool:
        """Every seed finished or diverged: the group's numbers are final."""
        return all(run.record.status in ("finished", "diverged") for run in self.runs)

    def stat(self, key: str) -> Stat | None:
        values = [v for run in self.runs if (v := run.numbers[key]) is not None]
        if not values:
            return None
        return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def flagged(self, mode: str, scope: str | None = None) -> int:
        """How many seeds are diagnosed with mode (and, for not_learning, that scope)."""
        return sum(
            any(
                f.mode == mode and (scope is None or f.evidence.get("scope") == scope)
                for f in run.record.diagnosis.findings
            )
            for run in self.runs
        )


@dataclass(frozen=True)
class Study:
    name: str
    folder: Path
    groups: tuple[Group, ...]
    records: tuple[RunRecord, ...]


def read_study(folder: Path) -> Study:
    """A grid folder as a study: named by its grid.yaml (else the folder), runs grouped over seeds."""
    folder = Path(folder)
    records = read_grid(folder)
    try:
        document = yaml.safe_load((folder / GRID_FILE).read_text())
    except yaml.YAMLError:
        document = None
    name = str(document["name"]) if isinstance(document, dict) and document.get("name") else folder.resolve().name
    by_group: dict[str, list[Run]] = {}
    for record in records:
        by_group.setdefault(SEED_SUFFIX.sub("", record.name), []).append(
            Run(record, _read_config(folder / record.name))
        )
    groups = tuple(Group(name, group_name, tuple(runs)) for group_name, runs in by_group.items())
    return Study(name, folder, groups, tuple(records))


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return _flatten(config) if isinstance(config, dict) else {}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


# ------------------------------------------------------------------------------------------------ verdicts


class Inconclusive(Exception):
    """Raised by claim code when a study, a run or a number it needs is missing; the message says which."""


@dataclass(frozen=True)
class Verdict:
    claim: int
    text: str
    verdict: str
    uses: str  # which number the verdict rests on
    reason: str
    evidence: tuple[Group, ...] = ()


Studies = Mapping[str, Study]


def _study(studies: Studies, name: str) -> Study:
    if name not in studies:
        raise Inconclusive(f"study {name} is not among the report's folders")
    return studies[name]


def _groups(studies: Iterable[Study], where: Callable[[dict[str, Any]], bool]) -> list[Group]:
    return [group for study in studies for group in study.groups if where(group.config)]


def _one(study: Study, what: str, where: Callable[[dict[str, Any]], bool]) -> Group:
    """The single config of study matching where; Inconclusive when none, several, or not done."""
    found = _groups([study], where)
    if len(found) != 1:
        names = ", ".join(g.name for g in found) or "none"
        raise Inconclusive(f"{study.name}: needs exactly one config with {what}, found {len(found)} ({names})")
    _require_done(found)
    return found[0]


def _require_done(groups: Iterable[Group]) -> None:
    for group in groups:
        if not group.done:
            statuses = ", ".join(sorted({run.record.status for run in group.runs}))
            raise Inconclusive(f"{group.study}/{group.name} has not finished every seed ({statuses})")


def _number(group: Group, key: str) -> Stat:
    stat = group.stat(key)
    if stat is None:
        raise Inconclusive(f"{group.study}/{group.name} has no {key.replace('_', ' ')}")
    return stat


def margin(a: Stat, b: Stat, floor: float = MARGIN) -> float:
    """How far apart two means must be to count: the floor, or the two seed spreads summed when larger."""
    return max(floor, (a.std or 0.0) + (b.std or 0.0))


def compare(a: Group, b: Group, key: str, floor: float = MARGIN) -> int:
    """+1 when a's mean of key exceeds b's by more than the margin, -1 when b's exceeds a's, 0 within it."""
    sa, sb = _number(a, key), _number(b, key)
    difference = sa.mean - sb.mean
    if abs(difference) <= margin(sa, sb, floor):
        return 0
    return 1 if difference > 0 else -1


def _pairs(groups: Sequence[Group], differing: Sequence[str]) -> list[tuple[Group, Group]]:
    """Every two groups whose configs are equal apart from keys starting with one of differing (and the
    settings in IGNORED_FOR_PAIRING): twins that isolate what differs."""

    def key(group: Group) -> tuple:
        kept = {
            k: v
            for k, v in group.config.items()
            if k not in IGNORED_FOR_PAIRING and not any(k == d or k.startswith(f"{d}.") for d in differing)
        }
        return tuple(sorted((k, repr(v)) for k, v in kept.items()))

    return [(a, b) for i, a in enumerate(groups) for b in groups[i + 1 :] if key(a) == key(b)]


def _combine(parts: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """A conjunction: refuted if any part is, confirmed if all are, else inconclusive; the reasons joined."""
    outcomes = [outcome for outcome, _ in parts]
    verdict = REFUTED if REFUTED in outcomes else CONFIRMED if all(o == CONFIRMED for o in outcomes) else INCONCLUSIVE
    return verdict, "; ".join(f"{reason} ({outcome})" for outcome, reason in parts)


def _all_beat(subject: Group, others: Sequence[Group], key: str, higher_is_better: bool = True) -> str:
    """confirmed when subject beats every other beyond the margin, refuted when any beats it, else inconclusive."""
    signs = [compare(subject, other, key) * (1 if higher_is_better else -1) for other in others]
    if signs and all(sign > 0 for sign in signs):
        return CONFIRMED
    return REFUTED if any(sign < 0 for sign in signs) else INCONCLUSIVE


def _seeds_flagged(group: Group, mode: str, scope: str | None = None) -> str:
    flagged = group.flagged(mode, scope)
    return CONFIRMED if flagged == len(group.runs) else REFUTED if flagged == 0 else INCONCLUSIVE


def _pct(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    return f"{100 * stat.mean:.2f}" + (f" ± {100 * stat.std:.2f}" if stat.std is not None else "")


def _name(group: Group) -> str:
    return f"{group.study}/{group.name}"


def claim_1(studies: Studies) -> tuple[str, str, list[Group]]:
    """lr_momentum: the (largest lr, largest momentum) config reaches the highest early val acc of the study
    and is not diagnosed unstable in any seed."""
    study = _study(studies, "lr_momentum")
    lrs, momenta = _lr_momentum_axes(study)
    pick = _one(study, f"lr {lrs[-1]}, momentum {momenta[-1]}", _is(lr=lrs[-1], momentum=momenta[-1]))
    others = [g for g in study.groups if g is not pick]
    _require_done(others)
    fastest = _all_beat(pick, others, "early_val_acc")
    stable = _seeds_flagged(pick, "unstable")
    stable = {CONFIRMED: REFUTED, REFUTED: CONFIRMED}.get(stable, INCONCLUSIVE)
    early = ", ".join(f"{g.name} {_pct(g.stat('early_val_acc'))}" for g in [pick, *others])
    parts = [
        (fastest, f"fastest: {EARLY} (%) {early}"),
        (stable, f"stable: {pick.name} unstable in {pick.flagged('unstable')} of {len(pick.runs)} seeds"),
    ]
    return *_combine(parts), [pick, *others]


def claim_2(studies: Studies) -> tuple[str, str, list[Group]]:
    """lr_momentum: the (largest lr, smallest momentum) config is diagnosed unstable in every seed."""
    study = _study(studies, "lr_momentum")
    lrs, momenta = _lr_momentum_axes(study)
    lr, momentum = lrs[-1], momenta[0]
    group = _one(study, f"lr {lr}, momentum {momentum}", _is(lr=lr, momentum=momentum))
    swings = ", ".join(f"{g.name} {_pct(g.stat('swing'))}" for g in study.groups)
    verdict = _seeds_flagged(group, "unstable")
    reason = (
        f"{group.name} unstable in {group.flagged('unstable')} of {len(group.runs)} seeds; "
        f"val swing (std of epoch-to-epoch changes, points): {swings}"
    )
    return verdict, reason, list(study.groups)


def claim_3(studies: Studies) -> tuple[str, str, list[Group]]:
    """Every constant-lr config with a scheduled twin (same config but scheduler/warm-up, any study): each
    scheduled twin must end higher; per optimizer, then over optimizers."""
    groups = [g for s in studies.values() for g in s.groups if g.done]
    pairs = [
        (constant, scheduled)
        for a, b in _pairs(groups, ("scheduler", "warmup"))
        for constant, scheduled in ((a, b), (b, a))
        if constant.config.get("scheduler.name") == "constant" and scheduled.config.get("scheduler.name") != "constant"
    ]
    if not pairs:
        raise Inconclusive("no constant-lr config has a twin with an lr schedule (same config otherwise, same epochs)")
    parts, evidence = [], []
    for optimizer in sorted({c.config.get("optimizer.name") for c, _ in pairs}):
        mine = [(c, s) for c, s in pairs if c.config.get("optimizer.name") == optimizer]
        signs = [compare(s, c, "final_val_acc") for c, s in mine]
        outcome = CONFIRMED if all(x > 0 for x in signs) else REFUTED if any(x < 0 for x in signs) else INCONCLUSIVE
        shown = ", ".join(
            f"{_name(s)} {_pct(s.stat('final_val_acc'))} vs {_name(c)} {_pct(c.stat('final_val_acc'))}" for c, s in mine
        )
        parts.append((outcome, f"{optimizer}: {shown}"))
        for group in (g for pair in mine for g in pair):
            if all(group is not shown_group for shown_group in evidence):
                evidence.append(group)
    return *_combine(parts), evidence


def claim_4(studies: Studies) -> tuple[str, str, list[Group]]:
    """group2: plateau(mode=min on val_acc, no min_lr) vs plateau(mode=max on val_acc, no min_lr): ends lower,
    reaches a higher early val acc; and, in any study, plateau(min) with a min_lr > 0 ends within the margin
    of (or above) its plateau(max, no min_lr) twin."""
    study = _study(studies, "group2")
    low = _one(study, "plateau mode=min on val_acc, min_lr 0", _plateau("min", floor=False))
    high = _one(study, "plateau mode=max on val_acc, min_lr 0", _plateau("max", floor=False))
    ends = {-1: CONFIRMED, 1: REFUTED, 0: INCONCLUSIVE}[compare(low, high, "final_val_acc")]
    faster = {1: CONFIRMED, -1: REFUTED, 0: INCONCLUSIVE}[compare(low, high, "early_val_acc")]
    parts = [
        (
            ends,
            f"ends lower: {FINAL} (%) min {_pct(low.stat('final_val_acc'))} vs max {_pct(high.stat('final_val_acc'))} (post: 91.6 vs 93.5)",
        ),
        (
            faster,
            f"faster: {EARLY} (%) min {_pct(low.stat('early_val_acc'))} vs max {_pct(high.stat('early_val_acc'))}",
        ),
    ]
    candidates = _groups(studies.values(), lambda c: _plateau("min", floor=True)(c) or _plateau("max", floor=False)(c))
    fixes = [
        (a, b) if a.config["scheduler.mode"] == "min" else (b, a)
        for a, b in _pairs([g for g in candidates if g.done], ("scheduler.mode", "scheduler.min_lr"))
        if {a.config["scheduler.mode"], b.config["scheduler.mode"]} == {"min", "max"}
    ]
    evidence = [low, high]
    if not fixes:
        parts.append(
            (INCONCLUSIVE, "min_lr fix: no plateau(min, min_lr > 0) config with a plateau(max, min_lr 0) twin")
        )
    for fixed, twin in fixes:
        closed = CONFIRMED if compare(fixed, twin, "final_val_acc") >= 0 else REFUTED
        parts.append(
            (
                closed,
                f"min_lr fix: {_name(fixed)} {_pct(fixed.stat('final_val_acc'))} vs {_name(twin)} {_pct(twin.stat('final_val_acc'))}",
            )
        )
        evidence += [fixed, twin]
    return *_combine(parts), evidence


def claim_5(studies: Studies) -> tuple[str, str, list[Group]]:
    """group2: the cosine config reaches the highest early val acc of the study, is diagnosed unstable in no
    seed, and has the smallest val swing."""
    study = _study(studies, "group2")
    cosine = _one(study, "a cosine schedule", lambda c: c.get("scheduler.name") == "cosine")
    others = [g for g in study.groups if g is not cosine]
    _require_done(others)
    if not others:
        raise Inconclusive("group2 has no config besides cosine to compare with")
    fastest = _all_beat(cosine, others, "early_val_acc")
    calmest = REFUTED if cosine.flagged("unstable") else _all_beat(cosine, others, "swing", higher_is_better=False)
    early = ", ".join(f"{g.name} {_pct(g.stat('early_val_acc'))}" for g in [cosine, *others])
    swings = ", ".join(f"{g.name} {_pct(g.stat('swing'))}" for g in [cosine, *others])
    parts = [(fastest, f"fastest: {EARLY} (%) {early}"), (calmest, f"most stable: val swing (points) {swings}")]
    return *_combine(parts), [cosine, *others]


def claim_6(studies: Studies) -> tuple[str, str, list[Group]]:
    """group3: Adam lr 1e-3 with L2 (weight_decay > 0) at a constant lr ends at least CLEAR_MARGIN below every
    SGD-with-momentum config that has an lr schedule."""
    study = _study(studies, "group3")
    adam = _one(
        study,
        "Adam lr 1e-3, weight_decay > 0, constant lr",
        lambda c: (
            c.get("optimizer.name") == "adam"
            and math.isclose(c.get("optimizer.lr", 0), 1e-3)
            and (c.get("optimizer.weight_decay") or 0) > 0
            and c.get("scheduler.name") == "constant"
        ),
    )
    sgds = _groups([study], _is_sgd_momentum_scheduled)
    if not sgds:
        raise Inconclusive("group3 has no SGD + momentum config with an lr schedule")
    _require_done(sgds)
    parts = []
    for sgd in sgds:
        sa, ss = _number(adam, "final_val_acc"), _number(sgd, "final_val_acc")
        gap = ss.mean - sa.mean
        clear, noise = margin(ss, sa, CLEAR_MARGIN), margin(ss, sa)
        outcome = CONFIRMED if gap > clear else REFUTED if gap <= noise else INCONCLUSIVE
        parts.append(
            (
                outcome,
                f"{sgd.name} {_pct(ss)} vs {adam.name} {_pct(sa)}: {100 * gap:+.2f} points (clearly: > {100 * clear:.1f})",
            )
        )
    return *_combine(parts), [adam, *sgds]


def claim_7(studies: Studies) -> tuple[str, str, list[Group]]:
    """l2: the largest weight_decay (> 1e-2) is diagnosed not_learning throughout in every seed; the smallest is
    diagnosed overfitting in every seed; weight_decay 1e-2 ends within the margin of every other config or above."""
    study = _study(studies, "l2")
    _require_done(study.groups)
    by_wd = sorted(study.groups, key=lambda g: g.config.get("optimizer.weight_decay") or 0)
    largest, smallest = by_wd[-1], by_wd[0]
    if (largest.config.get("optimizer.weight_decay") or 0) <= 1e-2:
        raise Inconclusive("l2 has no weight_decay above 1e-2 (a 'too large' one)")
    good = _one(study, "weight_decay 1e-2", lambda c: math.isclose(c.get("optimizer.weight_decay") or 0, 1e-2))
    others = [g for g in study.groups if g is not good]
    signs = [compare(good, other, "final_val_acc") for other in others]
    parts = [
        (
            _seeds_flagged(largest, "not_learning", "throughout"),
            f"too large: {largest.name} not learning throughout in {largest.flagged('not_learning', 'throughout')} of {len(largest.runs)} seeds, {FINAL} {_pct(largest.stat('final_val_acc'))}%",
        ),
        (
            _seeds_flagged(smallest, "overfitting"),
            f"too small: {smallest.name} overfitting in {smallest.flagged('overfitting')} of {len(smallest.runs)} seeds",
        ),
        (
            REFUTED if any(s < 0 for s in signs) else CONFIRMED,
            f"1e-2 good: {good.name} {_pct(good.stat('final_val_acc'))}%, "
            + ", ".join(f"{g.name} {_pct(g.stat('final_val_acc'))}" for g in others),
        ),
    ]
    return *_combine(parts), by_wd


def claim_8(studies: Studies) -> tuple[str, str, list[Group]]:
    """Any study: cosine twins differing only in eta_min, one 3+ orders of magnitude below the lr and one fewer;
    the wide one must end lower."""
    cosines = [g for g in _groups(studies.values(), lambda c: c.get("scheduler.name") == "cosine") if g.done]
    pairs = []
    for a, b in _pairs(cosines, ("scheduler.eta_min",)):
        wide, narrow = sorted((a, b), key=_cosine_orders, reverse=True)
        if _cosine_orders(wide) >= 3 - 1e-9 > _cosine_orders(narrow):
            pairs.append((wide, narrow))
    if not pairs:
        raise Inconclusive("no two cosine configs differ only in eta_min, one 3+ orders below the lr and one fewer")
    parts = []
    for wide, narrow in pairs:
        outcome = {-1: CONFIRMED, 1: REFUTED, 0: INCONCLUSIVE}[compare(wide, narrow, "final_val_acc")]
        parts.append(
            (
                outcome,
                f"{_name(wide)} ({_cosine_orders(wide):.1f} orders) {_pct(wide.stat('final_val_acc'))} vs {_name(narrow)} ({_cosine_orders(narrow):.1f}) {_pct(narrow.stat('final_val_acc'))}",
            )
        )
    return *_combine(parts), [g for pair in pairs for g in pair]


def claim_9(studies: Studies) -> tuple[str, str, list[Group]]:
    """group3: NAdam at a constant lr ends above Adam at a constant lr (same weight_decay); NAdam with an lr
    schedule ends within the margin of (or above) every SGD + momentum config with a schedule."""
    study = _study(studies, "group3")
    nadam = _one(
        study,
        "NAdam, constant lr",
        lambda c: c.get("optimizer.name") == "nadam" and c.get("scheduler.name") == "constant",
    )
    wd = nadam.config.get("optimizer.weight_decay")
    adam = _one(
        study,
        f"Adam, constant lr, weight_decay {wd}",
        lambda c: (
            c.get("optimizer.name") == "adam"
            and c.get("scheduler.name") == "constant"
            and c.get("optimizer.weight_decay") == wd
        ),
    )
    scheduled = _one(
        study,
        "NAdam with an lr schedule",
        lambda c: c.get("optimizer.name") == "nadam" and c.get("scheduler.name") != "constant",
    )
    sgds = _groups([study], _is_sgd_momentum_scheduled)
    _require_done(sgds)
    parts = [
        (
            {1: CONFIRMED, -1: REFUTED, 0: INCONCLUSIVE}[compare(nadam, adam, "final_val_acc")],
            f"beats Adam: {nadam.name} {_pct(nadam.stat('final_val_acc'))} vs {adam.name} {_pct(adam.stat('final_val_acc'))}",
        )
    ]
    if not sgds:
        parts.append((INCONCLUSIVE, "no SGD + momentum config with a schedule in group3"))
    for sgd in sgds:
        outcome = CONFIRMED if compare(scheduled, sgd, "final_val_acc") >= 0 else REFUTED
        parts.append(
            (
                outcome,
                f"as strong as SGD: {scheduled.name} {_pct(scheduled.stat('final_val_acc'))} vs {sgd.name} {_pct(sgd.stat('final_val_acc'))}",
            )
        )
    return *_combine(parts), [nadam, adam, scheduled, *sgds]


def _lr_momentum_axes(study: Study) -> tuple[list[float], list[float]]:
    """The study's lr values and momentum values, each sorted; Inconclusive unless there are 2+ of each."""
    lrs = sorted({lr for g in study.groups if (lr := g.config.get("optimizer.lr")) is not None})
    momenta = sorted({m for g in study.groups if (m := g.config.get("optimizer.momentum")) is not None})
    if len(lrs) < 2 or len(momenta) < 2:
        raise Inconclusive(f"{study.name} needs 2+ lrs and momenta, has lr {lrs} and momentum {momenta}")
    return lrs, momenta


def _is(lr: float, momentum: float) -> Callable[[dict[str, Any]], bool]:
    return lambda c: c.get("optimizer.lr") == lr and c.get("optimizer.momentum") == momentum


def _plateau(mode: str, floor: bool) -> Callable[[dict[str, Any]], bool]:
    """ReduceLROnPlateau in mode on val_acc, with a min_lr above 0 (floor) or none."""
    return lambda c: (
        c.get("scheduler.name") == "plateau"
        and c.get("scheduler.mode") == mode
        and c.get("scheduler.monitor") == "val_acc"
        and ((c.get("scheduler.min_lr") or 0) > 0) == floor
    )


def _is_sgd_momentum_scheduled(config: dict[str, Any]) -> bool:
    return (
        config.get("optimizer.name") in ("sgd", "fused_sgdw")
        and (config.get("optimizer.momentum") or 0) > 0
        and config.get("scheduler.name") not in (None, "constant")
    )


def _cosine_orders(group: Group) -> float:
    """Orders of magnitude between the lr and cosine's eta_min (inf for eta_min 0)."""
    eta_min = group.config.get("scheduler.eta_min") or 0
    return math.inf if eta_min <= 0 else math.log10(group.config["optimizer.lr"] / eta_min)


CLAIMS: tuple[tuple[str, str, Callable[[Studies], tuple[str, str, list[Group]]]], ...] = (
    ("Large lr + large momentum trains fastest and stays stable.", EARLY, claim_1),
    ("Large lr + small momentum is unstable on validation.", "diagnosis `unstable` (val acc swings)", claim_2),
    ("Every optimizer benefits from an lr schedule.", FINAL, claim_3),
    (
        "Plateau(min on acc) converges faster but ends lower than plateau(max) (0.916 vs 0.935); a min_lr fixes it.",
        f"{FINAL}; {EARLY} for 'faster'",
        claim_4,
    ),
    ("SGD + momentum + cosine converges fastest and most stably of group 2.", f"{EARLY}; val swing", claim_5),
    ("Plain Adam (1e-3) + L2 is clearly worse than SGD + momentum + schedule.", FINAL, claim_6),
    (
        "L2 too large -> no learning (~10%); too small -> over-fitting; ~1e-2 good for ResNet-18.",
        f"diagnoses; {FINAL}",
        claim_7,
    ),
    ("Cosine with max/min lr 3+ orders of magnitude apart hurts near the optimum.", FINAL, claim_8),
    ("NAdam (Adam + Nesterov momentum) should be strong (untested in the post).", FINAL, claim_9),
)


def evaluate_claims(studies: Studies) -> list[Verdict]:
    """A verdict on each of the post's claims; a claim whose study, runs or numbers are missing is inconclusive
    with the reason."""
    verdicts = []
    for number, (text, uses, evaluate) in enumerate(CLAIMS, start=1):
        try:
            verdict, reason, evidence = evaluate(studies)
        except Inconclusive as missing:
            verdict, reason, evidence = INCONCLUSIVE, str(missing), []
        verdicts.append(Verdict(number, text, verdict, uses, reason, tuple(evidence)))
    return verdicts


# ------------------------------------------------------------------------------------------------- REPORT.md


def load_studies(folders: Sequence[Path]) -> dict[str, Study]:
    """Each folder read as a study, by name; ReportError when two folders hold the same study."""
    studies: dict[str, Study] = {}
    for folder in folders:
        study = read_study(folder)
        if study.name in studies:
            raise ReportError(
                f"{folder} and {studies[study.name].folder} both hold study {study.name}; pass one folder per study"
            )
        studies[study.name] = study
    return studies


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
    path = out_dir / "REPORT.md"
    write_file_atomically(path, render_report(studies, evaluate_claims(studies), out_dir).encode())
    return path


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
- Diagnoses: fasttrick.grid.diagnosis (thresholds in its `Thresholds`), per run, from its metrics.
"""


def render_report(studies: Studies, verdicts: Sequence[Verdict], out_dir: Path) -> str:
    counts = {v: sum(x.verdict == v for x in verdicts) for v in (CONFIRMED, REFUTED, INCONCLUSIVE)}
    lines = [
        "# Reproduction report",
        "",
        "Studies: " + ", ".join(f"{s.name} (`{_relative(s.folder, out_dir)}`)" for s in studies.values()) + ".",
        "Written by `python -m fasttrick.report` from the run folders' metrics.jsonl.",
        f"The post's nine claims: {counts[CONFIRMED]} confirmed, {counts[REFUTED]} refuted, "
        f"{counts[INCONCLUSIVE]} inconclusive.",
        "",
        READING_NOTES.rstrip(),
        "",
        "## The post's claims",
        "",
        "| # | claim | verdict | number used |",
        "|---:|:---|:---|:---|",
        *(f"| {v.claim} | {v.text} | **{v.verdict}** | {v.uses} |" for v in verdicts),
    ]
    for v in verdicts:
        lines += ["", f"### Claim {v.claim}: {v.verdict}", "", f"> {v.text}", "", v.reason + "."]
        if v.evidence:
            lines += ["", *_group_table(v.evidence, with_study=True)]
    for study in studies.values():
        lines += ["", f"## Study: {study.name}", "", f"Folder `{_relative(study.folder, out_dir)}`.", ""]
        lines += _group_table(study.groups, with_study=False)
        lines += [""] + [
            f"![{name} of {study.name}]({_relative(study.folder / 'plots' / f'{name}.png', out_dir)})"
            for name in PLOT_NAMES
        ]
        lines += ["", "Diagnoses:", "", *render_diagnoses(study.records)]
    return "\n".join(lines) + "\n"


def _group_table(groups: Iterable[Group], with_study: bool) -> list[str]:
    columns = ("study", *STUDY_COLUMNS) if with_study else STUDY_COLUMNS
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(":---" if i < 3 else "---:" for i in range(len(columns))) + "|",
    ]
    for group in groups:
        statuses = [run.record.status for run in group.runs]
        status = (
            statuses[0]
            if len(set(statuses)) == 1
            else ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        )
        modes = [f.mode for run in group.runs for f in run.record.diagnosis.findings]
        diagnoses = ", ".join(f"{m} {modes.count(m)}/{len(group.runs)}" for m in dict.fromkeys(modes)) or "-"
        cells = [
            f"{group.name}: {_describe(group.config)}",
            ", ".join(str(seed) for seed in group.seeds),
            status,
            _pct(group.stat("final_val_acc")),
            _pct(group.stat("best_val_acc")),
            _epochs(group.stat("best_epoch"), len(group.runs)),
            _pct(group.stat("early_val_acc")),
            _epochs(group.stat("epochs_to_90"), len(group.runs)),
            _epochs(group.stat("epochs_to_93"), len(group.runs)),
            diagnoses,
        ]
        lines.append("| " + " | ".join(([group.study] if with_study else []) + cells) + " |")
    return lines


def _epochs(stat: Stat | None, seeds: int) -> str:
    """Mean epoch (± std); with "(k/n)" when only k of the n seeds reached it."""
    if stat is None:
        return "-"
    text = f"{stat.mean:.1f}" + (f" ± {stat.std:.1f}" if stat.std is not None else "")
    return text if stat.n == seeds else f"{text} ({stat.n}/{seeds})"


def _describe(config: Mapping[str, Any]) -> str:
    """The settings the post varies: optimizer, lr, momentum, weight decay, schedule, warm-up, epochs."""
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


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())
