"""Checks of a grid file that pydantic's per-run validation cannot make: which runs ``--only`` selects,
where seeds may be given, and what ``--set seed=N`` means for a grid of seeds."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from ..config import ConfigError, GridFile


def select_names(names: Sequence[str], patterns: Sequence[str] | None) -> set[str]:
    """The names matching any glob of ``--only`` (comma-separated or repeated; all when none given)."""
    if not patterns:
        return set(names)
    globs = [g for p in patterns for g in p.split(",") if g]
    unmatched = [g for g in globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]
    if unmatched:
        raise ConfigError([f"--only {g!r} matches no run; runs: {', '.join(names)}" for g in unmatched])
    return {n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)}


def seed_from_cli(spec: GridFile, cli: list[tuple[str, Any]]) -> tuple[GridFile, list[tuple[str, Any]]]:
    """``--set seed=N`` becomes ``seeds: [N]``, so the run's name says its seed. A grid of several seeds is
    refused: each of its runs would get seed N under a name saying another, and the report would show
    the spread of one seed as the spread over several."""
    seeds = [value for key, value in cli if key == "seed"]
    if not seeds:
        return spec, cli
    if len(spec.seeds) > 1:
        raise ConfigError(
            [
                f"--set seed={seeds[-1]}: this grid's seeds: {spec.seeds} name its runs (...-seed{spec.seeds[0]}, "
                f"...-seed{spec.seeds[1]}); --set seed would give them all seed {seeds[-1]}. Run one seed with "
                f"--only '*-seed{spec.seeds[0]}', or change seeds: in the file"
            ]
        )
    return spec.model_copy(update={"seeds": [seeds[-1]]}), [(k, v) for k, v in cli if k != "seed"]


def misplaced_seeds(spec: GridFile) -> list[str]:
    """``seed`` given anywhere but ``seeds:`` would be overwritten by the seeds axis: refused, not ignored."""
    layers = [("base", spec.base), *((f"profiles.{k}", v) for k, v in spec.profiles.items())]
    layers += [(f"runs[{i}]", entry) for i, entry in enumerate(spec.runs or [])]
    problems = [
        f"{where}.seed: a grid's seeds come from seeds: (e.g. seeds: [0, 1])"
        for where, layer in layers
        if "seed" in layer
    ]
    if "seed" in spec.grid:
        problems.append("grid.seed: a grid's seeds come from seeds:, not an axis (write seeds: [...])")
    for i, entry in enumerate(spec.runs or []):
        name = entry.get("name")
        if name is not None and (isinstance(name, bool) or not isinstance(name, (str, int))):
            problems.append(f"runs[{i}].name: expected a text name, got {name!r}; quote it")
    return problems
