"""Studies: grid folders read as configs over seeds, with the per-run numbers the claims compare.

A study is one grid folder, named by its grid.yaml (else the folder). Its runs are grouped into configs by
name with the ``-seed<N>`` suffix removed; a config's numbers are the mean and sample standard deviation over
its seeds. Which number: CIFAR-10's test split is the only held-out set, so it is both "validation" and
"test"; the best epoch is chosen on it and is optimistic, so claims use the final-epoch val acc, or the val
acc at the epoch a quarter into the run for speed.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..runfiles import TERMINAL, finite
from .diagnosis import val_swing
from .runs import RunRecord, read_grid, read_grid_file

SEED_SUFFIX = re.compile(r"-seed\d+$")
# "Converges fast" is read off the val acc at the epoch a quarter into the run (epoch 8 of 30, 50 of 200):
# late enough that the first noisy epochs are past, early enough that every config is still far from its end.
EARLY_SHARE = 0.25
FINAL = "final-epoch val acc"
EARLY = f"val acc at the epoch {EARLY_SHARE:.0%} into the run"


class ReportError(ValueError):
    """The folders cannot make one report (two folders hold the same study)."""


@dataclass(frozen=True)
class Run:
    record: RunRecord

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's config.yaml, flattened to dotted keys ("optimizer.lr")."""
        return flatten(self.record.config)

    @cached_property
    def numbers(self) -> dict[str, float | None]:
        """The per-run numbers groups average: accuracies and epochs from the result, plus the early val
        acc and the val swing (fasttrick.results.diagnosis.val_swing)."""
        result = self.record.result
        early_epoch = max(1, math.ceil(EARLY_SHARE * self.planned_epochs))
        early = next((row.get("val_acc") for row in self.record.metrics if row["epoch"] == early_epoch), None)
        return {
            "final_val_acc": result["final_val_acc"],
            "best_val_acc": result["best_val_acc"],
            "best_epoch": result["best_epoch"],
            "epochs_to_90": result["epochs_to_90"],
            "epochs_to_93": result["epochs_to_93"],
            "early_val_acc": finite(early),
            "swing": val_swing(self.record.metrics),
        }

    @property
    def planned_epochs(self) -> int:
        return int(self.config.get("train.epochs") or self.record.result["epochs"])


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
    def label(self) -> str:
        return f"{self.study}/{self.name}"

    @property
    def seeds(self) -> list[Any]:
        return [run.config.get("seed") for run in self.runs]

    @property
    def repeated_seeds(self) -> list[Any]:
        """Seeds that more than one run of the group was trained with: their spread is no spread over seeds."""
        seeds = [seed for seed in self.seeds if seed is not None]
        return sorted({seed for seed in seeds if seeds.count(seed) > 1}, key=repr)

    @property
    def epochs(self) -> list[int]:
        """Each seed's last finished epoch."""
        return [run.record.result["epochs"] for run in self.runs]

    @property
    def done(self) -> bool:
        """Every seed finished or diverged: the group's numbers are final."""
        return all(run.record.status in TERMINAL for run in self.runs)

    def stat(self, key: str) -> Stat | None:
        values = [v for run in self.runs if (v := run.numbers[key]) is not None]
        if not values:
            return None
        return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def outcomes(self, mode: str, scope: str | None = None) -> list[str]:
        """Each seed's diagnosis of mode: flagged, healthy or not judged (fasttrick.results.diagnosis)."""
        return [run.record.diagnosis.outcome(mode, scope) for run in self.runs]


@dataclass(frozen=True)
class Study:
    name: str
    folder: Path
    groups: tuple[Group, ...]
    records: tuple[RunRecord, ...]
    grid: dict[str, Any]  # grid.yaml: the study's name, source config, profile, overrides, resolved runs


def read_study(folder: Path) -> Study:
    """A grid folder as a study: named by its grid.yaml (else the folder), runs grouped over seeds."""
    folder = Path(folder)
    records = read_grid(folder)
    grid = read_grid_file(folder)
    name = str(grid["name"]) if grid.get("name") else folder.resolve().name
    by_group: dict[str, list[Run]] = {}
    for record in records:
        by_group.setdefault(SEED_SUFFIX.sub("", record.name), []).append(Run(record))
    groups = tuple(Group(name, group_name, tuple(runs)) for group_name, runs in by_group.items())
    return Study(name, folder, groups, tuple(records), grid)


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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: {"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat
