"""How a measure becomes an outcome: comparisons against the seed spread, diagnoses over seeds, and the three
outcomes kept apart.

Every part of a claim ends in one of three outcomes: CONFIRMED (the measure exists and says yes), REFUTED (it
exists and says no) or INCONCLUSIVE (it cannot be taken: a study, a config or a number is missing, a run is
too short for the diagnosis, a difference is within noise); the last always carries the reason. A claim code
raises `Inconclusive` with the reason when a measure it needs is missing.

"A beats B" needs the difference of the means to exceed the margin: `MARGIN`, or the two configs' seed
standard deviations summed when larger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .diagnosis import FLAGGED, HEALTHY, NOT_JUDGED, THRESHOLDS
from .study import Group, Stat

CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"
OUTCOMES = (CONFIRMED, REFUTED, INCONCLUSIVE)
# Half a point: the seed-to-seed spread of a finished ResNet-18/CIFAR-10 run is about 0.1-0.2 points, more
# early in training; a difference below this is not evidence either way.
MARGIN = 0.005
# Claim 6 says "clearly worse": at least a full point.
CLEAR_MARGIN = 0.01

Part = tuple[str, str]  # (outcome, the reason with its numbers)


class Inconclusive(Exception):
    """Raised by claim code when a study, a run or a number it needs is missing; the message says which."""


def distinct_seeds(group: Group) -> None:
    """Inconclusive when runs of the group repeat a seed: n runs of one seed are one measurement, not n."""
    if repeated := group.repeated_seeds:
        names = ", ".join(run.record.name for run in group.runs if run.config.get("seed") in repeated)
        raise Inconclusive(
            f"{group.label}: runs {names} were all trained with seed {', '.join(map(str, repeated))}; a spread "
            "over one seed is not one over seeds (train each with its own seed)"
        )


def number(group: Group, key: str) -> Stat:
    distinct_seeds(group)
    stat = group.stat(key)
    if stat is None:
        raise Inconclusive(f"{group.label} has no {key.replace('_', ' ')}")
    return stat


@dataclass(frozen=True)
class Comparison:
    """group a's mean of a number against group b's, with the margin it must exceed and the seed spread."""

    a: Group
    b: Group
    key: str
    difference: float  # a's mean - b's mean
    margin: float
    spread: float | None  # the two seed standard deviations summed; None when either config has one seed

    @property
    def sign(self) -> int:
        """+1 when a exceeds b by more than the margin, -1 when b exceeds a, 0 within it."""
        if abs(self.difference) <= self.margin:
            return 0
        return 1 if self.difference > 0 else -1

    def text(self) -> str:
        if self.spread is None:
            noise = "single runs, no seed spread to compare with"
        else:
            beyond = "exceeds" if abs(self.difference) > self.spread else "within"
            noise = f"{beyond} the seed spread {100 * self.spread:.2f}"
        return (
            f"{self.a.label} {pct(self.a.stat(self.key))} vs {self.b.label} {pct(self.b.stat(self.key))}: "
            f"{100 * self.difference:+.2f} points (margin {100 * self.margin:.2f}; {noise})"
        )


def compare(a: Group, b: Group, key: str, floor: float = MARGIN) -> Comparison:
    sa, sb = number(a, key), number(b, key)
    spread = None if sa.std is None or sb.std is None else sa.std + sb.std
    return Comparison(a, b, key, sa.mean - sb.mean, max(floor, spread or 0.0), spread)


def expect(comparison: Comparison, wanted: int) -> str:
    """The verdict mapping: the difference goes the wanted way (+1: a higher) -> confirmed, the other way ->
    refuted, within the margin -> inconclusive."""
    if comparison.sign == 0:
        return INCONCLUSIVE
    return CONFIRMED if comparison.sign == wanted else REFUTED


def at_least(comparison: Comparison) -> str:
    """ "a is as good as b": confirmed when a is within the margin of b or above, refuted when clearly below."""
    return REFUTED if comparison.sign < 0 else CONFIRMED


def conjunction(outcomes: Sequence[str]) -> str:
    """Refuted if any outcome is, confirmed if all are, else inconclusive."""
    if REFUTED in outcomes:
        return REFUTED
    return CONFIRMED if outcomes and all(o == CONFIRMED for o in outcomes) else INCONCLUSIVE


def all_expected(comparisons: Sequence[Comparison], wanted: int = 1) -> Part:
    """Every comparison goes the wanted way beyond its margin (`expect`), as one part."""
    return conjunction([expect(c, wanted) for c in comparisons]), "; ".join(c.text() for c in comparisons)


def beats_all(subject: Group, others: Sequence[Group], key: str, wanted: int = 1) -> Part:
    """Subject beats every other config (wanted=+1: higher is better, -1: lower); refuted when any beats it."""
    if not others:
        raise Inconclusive(f"{subject.label} has no other config to compare with")
    return all_expected([compare(subject, other, key) for other in others], wanted)


def diagnosed(group: Group, mode: str, scope: str | None = None, wanted: bool = True) -> Part:
    """Whether every seed of group is diagnosed with mode (wanted=True) or none is (wanted=False). A seed
    whose run is too short for the mode makes it inconclusive: not judged is not healthy."""
    distinct_seeds(group)
    outcomes = group.outcomes(mode, scope)
    what = f"{mode} ({scope})" if scope else mode
    counts = f"{what} in {outcomes.count(FLAGGED)} of {len(outcomes)} seeds of {group.label}"
    if NOT_JUDGED in outcomes:
        epochs = ", ".join(str(e) for e in sorted(set(group.epochs)))
        return INCONCLUSIVE, (
            f"{what} not judged in {outcomes.count(NOT_JUDGED)} of {len(outcomes)} seeds of {group.label}: runs of "
            f"{epochs} epochs, the diagnosis judges from {THRESHOLDS.shortest(mode)}"
        )
    if all(o == FLAGGED for o in outcomes):
        return (CONFIRMED if wanted else REFUTED), counts
    if all(o == HEALTHY for o in outcomes):
        return (REFUTED if wanted else CONFIRMED), counts
    return INCONCLUSIVE, counts + " (the seeds disagree)"


def measured(evaluate: Callable[..., Part], *args: Any) -> Part:
    """One part of a claim, ``evaluate(*args)`` (args bind a loop's values); a measure it cannot take makes
    that part inconclusive with the reason."""
    try:
        return evaluate(*args)
    except Inconclusive as missing:
        return INCONCLUSIVE, str(missing)


def combine(parts: Sequence[Part]) -> Part:
    """A conjunction: refuted if any part is, confirmed if all are, else inconclusive; the reasons joined."""
    return conjunction([outcome for outcome, _ in parts]), "; ".join(
        f"{reason} ({outcome})" for outcome, reason in parts
    )


def power(groups: Iterable[Group]) -> str:
    """What a verdict rests on: seeds per config and epochs; with one seed, that it is a single-run observation."""
    groups = list(groups)
    if not groups:
        return "no runs"
    seeds = sorted({len(g.runs) for g in groups})
    epochs = sorted({e for g in groups for e in g.epochs})
    text = f"{_span(seeds)} seed(s) per config, {_span(epochs)} epochs"
    if seeds[0] == 1:
        text += "; single-run observation: no seed spread tells a difference from noise"
    return text


def _span(values: Sequence[int]) -> str:
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def pct(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    return f"{100 * stat.mean:.2f}" + (f" ± {100 * stat.std:.2f}" if stat.std is not None else "")
