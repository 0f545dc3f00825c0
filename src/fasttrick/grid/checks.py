"""Checks of a grid file that pydantic's per-run validation cannot make: which runs ``--only`` selects,
where seeds may be given, what ``--set seed=N`` means for a grid of seeds, and settings a layer gives twice."""

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


def _leaf_paths(layer: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in layer.items():
        path = f"{prefix}{key}"
        paths += _leaf_paths(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return paths


def layer_problems(spec: GridFile) -> list[str]:
    """What the layers of a grid file say that layering would silently drop: a ``seed`` anywhere but
    ``seeds:`` (the seeds axis overwrites it), one setting given twice in a layer under two spellings
    (``optimizer.lr:`` and ``optimizer: {lr: }``; the later would win), and a run name that is not text."""
    layers = [("base", spec.base), *((f"profiles.{k}", v) for k, v in spec.profiles.items())]
    layers += [(f"runs[{i}]", entry) for i, entry in enumerate(spec.runs or [])]
    problems = [
        f"{where}.seed: a grid's seeds come from seeds: (e.g. seeds: [0, 1])"
        for where, layer in layers
        if "seed" in layer
    ]
    if "seed" in spec.grid:
        problems.append("grid.seed: a grid's seeds come from seeds:, not an axis (write seeds: [...])")
    for where, layer in layers:
        paths = _leaf_paths(layer)
        for path in sorted({path for path in paths if paths.count(path) > 1}):
            problems.append(f"{where}.{path}: given twice (as a dotted key and inside its block); keep one")
        for block in ("optimizer", "scheduler"):  # a block naming its name replaces what was set before it
            dotted = [key for key in layer if key.startswith(f"{block}.")]
            if dotted and isinstance(layer.get(block), dict) and "name" in layer[block]:
                problems.append(f"{where}: {', '.join(dotted)} beside the {block}: block; write them inside the block")
    for i, entry in enumerate(spec.runs or []):
        name = entry.get("name")
        if name is not None and (isinstance(name, bool) or not isinstance(name, (str, int))):
            problems.append(f"runs[{i}].name: expected a text name, got {name!r}; quote it")
    return problems
