"""The post's nine claims (docs/REPRODUCTION.md), each decided by explicit code from studies.

Each claim picks its configs by their config.yaml values (fasttrick.results.select), takes its measures
(fasttrick.results.evidence) and returns (outcome, reason, the configs it rests on). A part whose measure
cannot be taken is inconclusive with the reason, never a verdict: a diagnosis not judged (run too short), a
number missing, a difference within noise. A claim about "every X" is confirmed only when each X present was
tested and more than one was. Verdicts use the final-epoch val acc, or for speed the val acc a quarter into
the run, never the (optimistic) best epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import select
from .evidence import (
    CLEAR_MARGIN,
    CONFIRMED,
    INCONCLUSIVE,
    REFUTED,
    Inconclusive,
    Part,
    all_expected,
    at_least,
    beats_all,
    combine,
    compare,
    conjunction,
    diagnosed,
    expect,
    measured,
    pct,
    power,
)
from .select import Studies
from .study import EARLY, FINAL, Group

Decision = tuple[str, str, list[Group]]
# The optimizers the post says "every optimizer benefits from an lr schedule" of (study 4, group 1).
POST_OPTIMIZERS = ("sgd", "adam", "adamw")
# FusedSGDW is torch's SGD (coupled L2): the same optimizer for claims about optimizers.
OPTIMIZER_FAMILY = {"fused_sgdw": "sgd"}


@dataclass(frozen=True)
class Verdict:
    claim: int
    text: str
    verdict: str
    uses: str  # which number the verdict rests on
    reason: str
    evidence: tuple[Group, ...] = ()

    @property
    def power(self) -> str:
        """Seeds per config and epochs of the runs the verdict rests on (fasttrick.results.evidence.power)."""
        return power(self.evidence)


def claim_1(studies: Studies) -> Decision:
    """lr_momentum: the (largest lr, largest momentum) config reaches the highest early val acc of the study
    and is diagnosed unstable in no seed."""
    study = select.study(studies, "lr_momentum")
    lrs, momenta = select.lr_momentum_axes(study)
    pick = select.one(study, f"lr {lrs[-1]}, momentum {momenta[-1]}", select.lr_momentum(lrs[-1], momenta[-1]))
    others = [g for g in study.groups if g is not pick]
    select.require_done(others)
    fastest = measured(lambda: beats_all(pick, others, "early_val_acc"))
    stable = diagnosed(pick, "unstable", wanted=False)
    parts = [(fastest[0], f"fastest, {EARLY}: {fastest[1]}"), (stable[0], f"stable: {stable[1]}")]
    return *combine(parts), [pick, *others]


def claim_2(studies: Studies) -> Decision:
    """lr_momentum: the (largest lr, smallest momentum) config is diagnosed unstable in every seed."""
    study = select.study(studies, "lr_momentum")
    lrs, momenta = select.lr_momentum_axes(study)
    group = select.one(study, f"lr {lrs[-1]}, momentum {momenta[0]}", select.lr_momentum(lrs[-1], momenta[0]))
    outcome, reason = diagnosed(group, "unstable")
    swings = ", ".join(f"{g.name} {pct(g.stat('swing'))}" for g in study.groups)
    return outcome, f"{reason}; val swing (std of epoch-to-epoch changes, points): {swings}", list(study.groups)


def _family(group: Group) -> str:
    name = str(group.config.get("optimizer.name"))
    return OPTIMIZER_FAMILY.get(name, name)


def claim_3(studies: Studies) -> Decision:
    """Every optimizer present: each constant-lr config with a scheduled twin (same config but scheduler and
    warm-up, any study) must end higher with the schedule; confirmed only when every optimizer present has
    such a twin and more than one optimizer was tested."""
    done = [g for s in studies.values() for g in s.groups if g.done]
    twins = [
        (constant, scheduled)
        for a, b in select.pairs(done, ("scheduler", "warmup"))
        for constant, scheduled in ((a, b), (b, a))
        if constant.config.get("scheduler.name") == "constant" and scheduled.config.get("scheduler.name") != "constant"
    ]
    if not twins:
        raise Inconclusive("no constant-lr config has a twin with an lr schedule (same config otherwise, same epochs)")
    present = sorted({_family(g) for g in done})
    tested = sorted({_family(c) for c, _ in twins})
    parts: list[Part] = []
    evidence: list[Group] = []
    for family in tested:
        mine = [(c, s) for c, s in twins if _family(c) == family]
        outcome, reason = measured(lambda pairs: all_expected([compare(s, c, "final_val_acc") for c, s in pairs]), mine)
        parts.append((outcome, f"{family}: {reason}"))
        for group in (g for pair in mine for g in pair):
            if all(group is not seen for seen in evidence):  # by identity: a config twinned twice is one config
                evidence.append(group)
    verdict, reason = combine(parts)
    scope = (
        f"{verdict} for {len(tested)} of {len(present)} optimizers present ({', '.join(tested)} of "
        f"{', '.join(present)}); the post names {len(POST_OPTIMIZERS)} ({', '.join(POST_OPTIMIZERS)})"
    )
    if verdict == CONFIRMED and (tested != present or len(tested) < 2):
        verdict = INCONCLUSIVE
        scope += "; 'every optimizer' needs each optimizer present tested, and more than one"
    return verdict, f"{scope}; {reason}", evidence


def claim_4(studies: Studies) -> Decision:
    """group2: plateau(min on val_acc, no min_lr) ends lower than plateau(max on val_acc, no min_lr) and reaches
    a higher early val acc; in any study, plateau(min) with a min_lr > 0 ends within the margin of (or above) its
    plateau(max, no min_lr) twin."""
    study = select.study(studies, "group2")
    low = select.one(study, "plateau mode=min on val_acc, min_lr 0", select.plateau("min", floor=False))
    high = select.one(study, "plateau mode=max on val_acc, min_lr 0", select.plateau("max", floor=False))
    ends = measured(lambda: _part(compare(low, high, "final_val_acc"), expect, -1))
    faster = measured(lambda: _part(compare(low, high, "early_val_acc"), expect, +1))
    parts = [(ends[0], f"ends lower, {FINAL} (post: 91.6 vs 93.5): {ends[1]}"), (faster[0], f"faster: {faster[1]}")]
    candidates = select.groups(
        studies.values(), lambda c: select.plateau("min", True)(c) or select.plateau("max", False)(c)
    )
    fixes = [
        (a, b) if a.config["scheduler.mode"] == "min" else (b, a)
        for a, b in select.pairs([g for g in candidates if g.done], ("scheduler.mode", "scheduler.min_lr"))
        if {a.config["scheduler.mode"], b.config["scheduler.mode"]} == {"min", "max"}
    ]
    if not fixes:
        parts.append(
            (INCONCLUSIVE, "min_lr fix: no plateau(min, min_lr > 0) config with a plateau(max, min_lr 0) twin")
        )
    for fixed, twin in fixes:
        outcome, reason = measured(lambda f, t: _part(compare(f, t, "final_val_acc"), at_least), fixed, twin)
        parts.append((outcome, f"min_lr fix: {reason}"))
    return *combine(parts), [low, high, *(g for pair in fixes for g in pair)]


def _part(comparison, decide: Callable, *args) -> Part:
    return decide(comparison, *args), comparison.text()


def claim_5(studies: Studies) -> Decision:
    """group2: the cosine config reaches the highest early val acc of the study, is diagnosed unstable in no
    seed, and has the smallest val swing."""
    study = select.study(studies, "group2")
    cosine = select.one(study, "a cosine schedule", lambda c: c.get("scheduler.name") == "cosine")
    others = [g for g in study.groups if g is not cosine]
    select.require_done(others)
    if not others:
        raise Inconclusive("group2 has no config besides cosine to compare with")
    fastest = measured(lambda: beats_all(cosine, others, "early_val_acc"))
    calm = diagnosed(cosine, "unstable", wanted=False)
    if calm[0] == CONFIRMED:  # judged and not unstable in any seed: then the smallest swing decides
        calm = measured(lambda: beats_all(cosine, others, "swing", wanted=-1))
    parts = [(fastest[0], f"fastest, {EARLY}: {fastest[1]}"), (calm[0], f"most stable, val swing: {calm[1]}")]
    return *combine(parts), [cosine, *others]


def claim_6(studies: Studies) -> Decision:
    """group3: Adam lr 1e-3 with L2 (weight_decay > 0) at a constant lr ends at least CLEAR_MARGIN below every
    SGD-with-momentum config that has an lr schedule."""
    study = select.study(studies, "group3")
    adam = select.one(
        study,
        "Adam lr 1e-3, weight_decay > 0, constant lr",
        lambda c: (
            c.get("optimizer.name") == "adam"
            and math.isclose(c.get("optimizer.lr", 0), 1e-3)
            and (c.get("optimizer.weight_decay") or 0) > 0
            and c.get("scheduler.name") == "constant"
        ),
    )
    sgds = select.groups([study], select.sgd_momentum_scheduled)
    if not sgds:
        raise Inconclusive("group3 has no SGD + momentum config with an lr schedule")
    select.require_done(sgds)
    return *combine([measured(_clearly_above, sgd, adam) for sgd in sgds]), [adam, *sgds]


def _clearly_above(sgd: Group, adam: Group) -> Part:
    """Confirmed when sgd ends above adam by CLEAR_MARGIN (or the seed spread); refuted when not even beyond
    noise; inconclusive in between."""
    clear, noise = compare(sgd, adam, "final_val_acc", CLEAR_MARGIN), compare(sgd, adam, "final_val_acc")
    outcome = CONFIRMED if clear.sign > 0 else REFUTED if noise.sign <= 0 else INCONCLUSIVE
    return outcome, f"{clear.text()}, clearly: > {100 * clear.margin:.1f}"


def claim_7(studies: Studies) -> Decision:
    """l2: the largest weight_decay (> 1e-2) is diagnosed not_learning throughout in every seed; the smallest is
    diagnosed overfitting in every seed; weight_decay 1e-2 ends within the margin of every other config or above."""
    study = select.study(studies, "l2")
    select.require_done(study.groups)
    by_wd = sorted(study.groups, key=lambda g: g.config.get("optimizer.weight_decay") or 0)
    largest, smallest = by_wd[-1], by_wd[0]
    if (largest.config.get("optimizer.weight_decay") or 0) <= 1e-2:
        raise Inconclusive("l2 has no weight_decay above 1e-2 (a 'too large' one)")
    good = select.one(study, "weight_decay 1e-2", lambda c: math.isclose(c.get("optimizer.weight_decay") or 0, 1e-2))
    others = [g for g in study.groups if g is not good]
    too_large = diagnosed(largest, "not_learning", "throughout")
    too_small = diagnosed(smallest, "overfitting")
    fine = measured(lambda: _as_good_as_all(good, others))
    parts = [
        (too_large[0], f"too large: {too_large[1]}, {FINAL} {pct(largest.stat('final_val_acc'))}%"),
        (too_small[0], f"too small: {too_small[1]}"),
        (fine[0], f"1e-2 good: {fine[1]}"),
    ]
    return *combine(parts), by_wd


def _as_good_as_all(good: Group, others: Sequence[Group]) -> Part:
    comparisons = [compare(good, other, "final_val_acc") for other in others]
    return conjunction([at_least(c) for c in comparisons]), "; ".join(c.text() for c in comparisons)


def _cosine_orders(group: Group) -> float:
    """Orders of magnitude between the lr and cosine's eta_min (inf for eta_min 0)."""
    eta_min = group.config.get("scheduler.eta_min") or 0
    return math.inf if eta_min <= 0 else math.log10(group.config["optimizer.lr"] / eta_min)


def claim_8(studies: Studies) -> Decision:
    """Any study: cosine twins differing only in eta_min, one 3+ orders of magnitude below the lr and one fewer;
    the wide one must end lower."""
    cosines = [g for g in select.groups(studies.values(), lambda c: c.get("scheduler.name") == "cosine") if g.done]
    pairs = []
    for a, b in select.pairs(cosines, ("scheduler.eta_min",)):
        wide, narrow = sorted((a, b), key=_cosine_orders, reverse=True)
        if _cosine_orders(wide) >= 3 - 1e-9 > _cosine_orders(narrow):
            pairs.append((wide, narrow))
    if not pairs:
        raise Inconclusive("no two cosine configs differ only in eta_min, one 3+ orders below the lr and one fewer")
    parts = []
    for wide, narrow in pairs:
        outcome, reason = measured(lambda w, n: _part(compare(w, n, "final_val_acc"), expect, -1), wide, narrow)
        parts.append((outcome, f"{_cosine_orders(wide):.1f} vs {_cosine_orders(narrow):.1f} orders: {reason}"))
    return *combine(parts), [g for pair in pairs for g in pair]


def claim_9(studies: Studies) -> Decision:
    """group3: NAdam at a constant lr ends above Adam at a constant lr (same weight_decay); NAdam with an lr
    schedule ends within the margin of (or above) every SGD + momentum config with a schedule."""
    study = select.study(studies, "group3")
    nadam = select.one(
        study,
        "NAdam, constant lr",
        lambda c: c.get("optimizer.name") == "nadam" and c.get("scheduler.name") == "constant",
    )
    wd = nadam.config.get("optimizer.weight_decay")
    adam = select.one(
        study,
        f"Adam, constant lr, weight_decay {wd}",
        lambda c: (
            c.get("optimizer.name") == "adam"
            and c.get("scheduler.name") == "constant"
            and c.get("optimizer.weight_decay") == wd
        ),
    )
    scheduled = select.one(
        study,
        "NAdam with an lr schedule",
        lambda c: c.get("optimizer.name") == "nadam" and c.get("scheduler.name") != "constant",
    )
    sgds = select.groups([study], select.sgd_momentum_scheduled)
    select.require_done(sgds)
    beats = measured(lambda: _part(compare(nadam, adam, "final_val_acc"), expect, +1))
    parts = [(beats[0], f"beats Adam: {beats[1]}")]
    if not sgds:
        parts.append((INCONCLUSIVE, "no SGD + momentum config with a schedule in group3"))
    for sgd in sgds:
        outcome, reason = measured(lambda s: _part(compare(scheduled, s, "final_val_acc"), at_least), sgd)
        parts.append((outcome, f"as strong as SGD: {reason}"))
    return *combine(parts), [nadam, adam, scheduled, *sgds]


CLAIMS: tuple[tuple[str, str, Callable[[Studies], Decision]], ...] = (
    ("Large lr + large momentum trains fastest and stays stable.", f"{EARLY}; diagnosis `unstable`", claim_1),
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
