"""Finding the configs a claim is about, by the values in their config.yaml (never by run name)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .evidence import Inconclusive
from .study import Group, Study

Studies = Mapping[str, Study]
Where = Callable[[dict[str, Any]], bool]

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


def study(studies: Studies, name: str) -> Study:
    if name not in studies:
        raise Inconclusive(f"study {name} is not among the report's folders")
    return studies[name]


def groups(studies: Iterable[Study], where: Where) -> list[Group]:
    return [group for s in studies for group in s.groups if where(group.config)]


def one(s: Study, what: str, where: Where) -> Group:
    """The single config of study s matching where; Inconclusive when none, several, or not done."""
    found = groups([s], where)
    if len(found) != 1:
        names = ", ".join(g.name for g in found) or "none"
        raise Inconclusive(f"{s.name}: needs exactly one config with {what}, found {len(found)} ({names})")
    require_done(found)
    return found[0]


def require_done(found: Iterable[Group]) -> None:
    for group in found:
        if not group.done:
            statuses = ", ".join(sorted({run.record.status for run in group.runs}))
            raise Inconclusive(f"{group.label} has not finished every seed ({statuses})")


def pairs(candidates: Sequence[Group], differing: Sequence[str]) -> list[tuple[Group, Group]]:
    """Every two groups whose configs are equal apart from keys starting with one of differing (and the
    settings in IGNORED_FOR_PAIRING): twins that isolate what differs."""

    def key(group: Group) -> tuple:
        kept = {
            k: v
            for k, v in group.config.items()
            if k not in IGNORED_FOR_PAIRING and not any(k == d or k.startswith(f"{d}.") for d in differing)
        }
        return tuple(sorted((k, repr(v)) for k, v in kept.items()))

    return [(a, b) for i, a in enumerate(candidates) for b in candidates[i + 1 :] if key(a) == key(b)]


def lr_momentum_axes(s: Study) -> tuple[list[float], list[float]]:
    """The study's lr values and momentum values, each sorted; Inconclusive unless there are 2+ of each."""
    lrs = sorted({lr for g in s.groups if (lr := g.config.get("optimizer.lr")) is not None})
    momenta = sorted({m for g in s.groups if (m := g.config.get("optimizer.momentum")) is not None})
    if len(lrs) < 2 or len(momenta) < 2:
        raise Inconclusive(f"{s.name} needs 2+ lrs and momenta, has lr {lrs} and momentum {momenta}")
    return lrs, momenta


def lr_momentum(lr: float, momentum: float) -> Where:
    return lambda c: c.get("optimizer.lr") == lr and c.get("optimizer.momentum") == momentum


def plateau(mode: str, floor: bool) -> Where:
    """ReduceLROnPlateau in mode on val_acc, with a min_lr above 0 (floor) or none."""
    return lambda c: (
        c.get("scheduler.name") == "plateau"
        and c.get("scheduler.mode") == mode
        and c.get("scheduler.monitor") == "val_acc"
        and ((c.get("scheduler.min_lr") or 0) > 0) == floor
    )


def sgd_momentum_scheduled(config: dict[str, Any]) -> bool:
    return (
        config.get("optimizer.name") in ("sgd", "fused_sgdw")
        and (config.get("optimizer.momentum") or 0) > 0
        and config.get("scheduler.name") not in (None, "constant")
    )
