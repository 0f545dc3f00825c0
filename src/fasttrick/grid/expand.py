"""A grid file -> a validated list of named runs, or a ConfigError that lists every problem.

A grid file::

    name: group2                       # optional, default: the file's stem
    seeds: [0]                         # a grid axis: every run once per seed, "-seed<N>" in its name
    base: {...}                        # a partial run (fasttrick.config.RunConfig) shared by every run
    profiles:                          # optional overrides per --profile (quick is the default)
      faithful: {train.epochs: 200}
    runs:                              # optional list of partial runs (each may carry a name:)
      - {name: plateau-min, scheduler: {name: plateau, mode: min}}
    grid:                              # optional axes, crossed with each other and with runs
      optimizer.weight_decay: [0, 5.0e-4]          # a dotted key and its values, or
      optimizer: [{name: sgd}, {name: adam, lr: 1.0e-3}]   # a block and partial blocks

Each run is built in layers, later ones winning: the profile's built-in defaults (quick: 30 epochs,
faithful: 200), ``base``, ``profiles[<profile>]``, the ``runs`` entry, each axis value, the seed, and
last the command line (``--set``, ``--epochs``, ``--device``). Dicts merge key by key, except that an
``optimizer`` or ``scheduler`` block naming a different ``name`` replaces the block (so momentum from
an SGD base does not leak into an Adam run). Keys may be dotted (``optimizer.lr: 0.1``).

Run names come from what varies: a run entry's ``name`` (or its values), then each axis value, then
the seed (``lr0.2-m0.9-seed0``); they must be unique. Every run is validated before anything runs.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..config import (
    PROFILE_DEFAULTS,
    ConfigError,
    GridFile,
    ProfileName,
    RunConfig,
    config_warnings,
    describe_errors,
    is_profile,
    load_yaml,
)
from .checks import layer_problems, seed_from_cli, select_names

# A grid is expanded in memory before anything runs: 10 axes of 10 values would be 10^10 runs. The
# largest study (group2) has 30 runs; 10 000 leaves room for any real grid and bounds memory.
MAX_RUNS = 10_000
_BLOCKS_BY_NAME = ("optimizer", "scheduler")

# Short labels for run names; "" shows the bare value (plateau "max", "val_acc").
_ABBREVIATIONS = {
    "lr": "lr",
    "momentum": "m",
    "weight_decay": "wd",
    "eta_min": "etamin",
    "min_lr": "minlr",
    "step_size": "every",
    "gamma": "x",
    "patience": "pat",
    "factor": "f",
    "cooldown": "cool",
    "threshold": "thr",
    "t_0": "t",
    "t_mult": "tmult",
    "t_max": "tmax",
    "milestones": "at",
    "betas": "b",
    "epochs": "ep",
    "start_factor": "from",
    "width": "w",
    "batch_size": "bs",
    "mode": "",
    "monitor": "",
    "name": "",
}


@dataclass(frozen=True)
class GridRun:
    name: str
    config: RunConfig

    def resolved(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


@dataclass
class Grid:
    name: str
    profile: str
    runs: list[GridRun]
    source: str | None = None
    overrides: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)  # --sweep KEY=V1,V2 as given
    warnings: list[str] = field(default_factory=list)

    def select(self, patterns: Sequence[str] | None) -> list[GridRun]:
        """Runs whose name matches any glob in ``patterns`` (all when empty); ConfigError if one matches none."""
        chosen = select_names([r.name for r in self.runs], patterns)
        return [r for r in self.runs if r.name in chosen]

    def document(self) -> dict[str, Any]:
        """What grid.yaml holds: the expanded grid, every run's resolved config."""
        return {
            "name": self.name,
            "source": self.source,
            "profile": self.profile,
            "overrides": list(self.overrides),
            "sweeps": list(self.sweeps),
            "warnings": list(self.warnings),
            "runs": [{"name": r.name, "config": r.resolved()} for r in self.runs],
        }


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


def set_path(target: dict[str, Any], key: str, value: Any) -> None:
    """Apply ``value`` at dotted ``key`` in ``target``, merging dicts (see the module docstring)."""
    *parents, last = key.split(".")
    node = target
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    old = node.get(last)
    if isinstance(value, dict) and isinstance(old, dict):
        if last in _BLOCKS_BY_NAME and not parents and "name" in value and value["name"] != old.get("name"):
            node[last] = copy.deepcopy(value)
            return
        for k, v in value.items():
            set_path(old, str(k), v)
        return
    node[last] = copy.deepcopy(value)


def merge(target: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    for key, value in layer.items():
        set_path(target, str(key), value)
    return target


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_0-9]+)*")


def _parse_pairs(items: Iterable[str], flag: str, example: str, read: Any) -> list[tuple[str, Any]]:
    """``flag`` strings ``key=text`` -> (dotted key, ``read(text)``); ConfigError listing every bad one."""
    out, problems = [], []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            problems.append(f"{flag} {item!r}: expected key=value with a dotted key, e.g. {example}")
            continue
        try:
            out.append((key, read(text)))
        except Exception as err:  # yaml.YAMLError and friends
            problems.append(f"{flag} {item!r}: value is not YAML ({err})")
    if problems:
        raise ConfigError(problems)
    return out


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any]]:
    """``--set key=value`` strings -> (dotted key, YAML-parsed value)."""
    return _parse_pairs(items, "--set", "optimizer.lr=0.05", lambda text: load_yaml(text) if text.strip() else None)


def parse_sweeps(items: Iterable[str]) -> dict[str, list[Any]]:
    """``--sweep key=v1,v2,...`` strings -> grid axes {dotted key: values}, as a grid file's ``grid:`` holds them.

    The values are one YAML flow sequence without its brackets, so ``0.05,0.1`` is two numbers and
    ``[0.9,0.99],[0.8,0.9]`` two lists. A key given twice is refused (one axis, one list of values)."""
    axes: dict[str, list[Any]] = {}
    problems = []
    for key, values in _parse_pairs(items, "--sweep", "optimizer.lr=0.05,0.1,0.2", lambda t: load_yaml(f"[{t}]")):
        if key in axes:
            problems.append(f"--sweep {key}: given twice; list all its values in one --sweep {key}=A,B,...")
        axes[key] = values
    if problems:
        raise ConfigError(problems)
    return axes


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_format(v) for v in value)
    if value is None:
        return "none"
    return str(value).replace("%", "pct")


def _leaves(value: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{key}.{k}" if key else str(k))]
    return [(key, value)]


def label(value: Any, key: str = "") -> str:
    """A short, readable label for an axis value or run entry: {name: sgd, lr: 0.1} -> "sgd-lr0.1"."""
    parts = []
    for path, leaf in _leaves(value, key):
        last = path.rsplit(".", 1)[-1]
        abbr = _ABBREVIATIONS.get(last, last)
        if isinstance(leaf, bool) and abbr:
            parts.append(abbr if leaf else f"no{abbr}")
        else:
            parts.append(f"{abbr}{_format(leaf)}")
    return "-".join(parts)


def _clean_name(name: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._+-]", "_", name)).strip("-")


# ---------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------


def load_grid(
    path: str | Path,
    *,
    profile: str = "quick",
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    device: str | None = None,
    sweeps: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> Grid:
    """Read and expand a grid file; raises ConfigError (every problem, with key paths) if it cannot run.
    With ``only`` (``--only`` globs), runs it leaves out are not checked, and dropped when invalid."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError([f"--config {path}: cannot read ({err.strerror})"]) from err
    try:
        data = load_yaml(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: {err.problem or err.context}"]) from err
    except Exception as err:
        raise ConfigError([f"{path}: not valid YAML ({err})"]) from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level, got {type(data).__name__}"])
    return expand_grid(
        data,
        name=path.stem,
        source=str(path),
        profile=profile,
        overrides=overrides,
        epochs=epochs,
        device=device,
        sweeps=sweeps,
        only=only,
    )


def expand_grid(
    data: dict[str, Any],
    *,
    name: str = "grid",
    source: str | None = None,
    profile: str = "quick",
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    device: str | None = None,
    sweeps: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> Grid:
    """The grid of ``data`` (a grid file's mapping). ``sweeps`` (``--sweep key=v1,v2``) add axes to its ``grid:``,
    after the file's own and crossed with them; a sweep of a key the file sweeps replaces that axis, and
    ``seed=0,1`` replaces its ``seeds:``."""
    if not is_profile(profile):
        raise ConfigError([f"--profile {profile!r}: one of {', '.join(PROFILE_DEFAULTS)}"])
    swept = parse_sweeps(sweeps)
    if "seed" in swept:  # the seed axis is the file's seeds: (it names runs "-seed<N>")
        data = {**data, "seeds": swept.pop("seed")}
    if swept and isinstance(data.get("grid") or {}, dict):  # a grid: that is not a mapping is refused below
        data = {**data, "grid": {**(data.get("grid") or {}), **swept}}
    try:
        spec = GridFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, root=GridFile)) from None
    cli = parse_overrides(overrides)
    if epochs is not None:
        cli.append(("train.epochs", epochs))
    if device is not None:
        cli.append(("train.device", device))

    spec, cli = seed_from_cli(spec, cli)
    runs = _layer(spec, profile, cli)
    chosen = select_names([run_name for run_name, _ in runs], only)
    validated, problems, notes = _validate(runs, chosen)
    if problems:
        raise ConfigError([_with_runs(line, names, len(runs)) for line, names in problems.items()])
    return Grid(
        name=spec.name or name,
        profile=profile,
        runs=validated,
        source=source,
        overrides=list(overrides),
        sweeps=list(sweeps),
        warnings=[_with_runs(n, names, len(runs)) for n, names in notes.items()],
    )


def _layer(spec: GridFile, profile: ProfileName, cli: list[tuple[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(run name, layered partial config) for every run of the grid, in the layer order of the docstring."""
    if problems := layer_problems(spec):
        raise ConfigError(problems)
    entries = spec.runs if spec.runs is not None else [{}]
    axes = list(spec.grid.items())
    count = len(entries) * len(spec.seeds) * math.prod(len(values) for _, values in axes)
    if count > MAX_RUNS:
        raise ConfigError([f"the grid expands to {count:,} runs; at most {MAX_RUNS:,} (fewer axes or values)"])
    runs: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        entry = dict(entry)
        entry_name = entry.pop("name", None)
        entry_label = str(entry_name) if entry_name is not None else label(entry)
        for combo in product(*(values for _, values in axes)):
            for seed in spec.seeds:
                layered = merge({}, PROFILE_DEFAULTS[profile])
                merge(layered, spec.base)
                merge(layered, spec.profiles.get(profile, {}))
                merge(layered, entry)
                pieces = [entry_label]
                for (key, _), value in zip(axes, combo, strict=True):
                    set_path(layered, key, value)
                    pieces.append(label(value, key))
                layered["seed"] = seed
                for key, value in cli:
                    set_path(layered, key, value)
                pieces.append(f"seed{seed}")
                runs.append((_clean_name("-".join(p for p in pieces if p)), layered))
    return runs


def _validate(
    runs: list[tuple[str, dict[str, Any]]], chosen: set[str]
) -> tuple[list[GridRun], dict[str, list[str]], dict[str, list[str]]]:
    """(valid runs, {problem: run names}, {warning: run names}); duplicate names are a problem too. Runs
    not ``chosen`` (left out by --only) raise no problem and give no warning; invalid ones are dropped."""
    problems: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    validated: list[GridRun] = []
    for run_name, layered in runs:
        try:
            config = RunConfig.model_validate(layered)
        except ValidationError as err:
            for line in describe_errors(err) if run_name in chosen else ():
                problems.setdefault(line, []).append(run_name)
            continue
        validated.append(GridRun(run_name, config))
        for note in config_warnings(config) if run_name in chosen else ():
            notes.setdefault(note, []).append(run_name)
    seen: dict[str, int] = {}
    for run_name, _ in runs:
        seen[run_name] = seen.get(run_name, 0) + 1
    for run_name, count in seen.items():
        if count > 1:
            problems.setdefault(
                f"run name {run_name!r} is given to {count} runs: give the runs entries distinct `name:`s", []
            )
    return validated, problems, notes


def _with_runs(line: str, names: list[str], total: int) -> str:
    if not names:
        return line
    if len(names) == total and total > 1:
        return f"{line}  [every run]"
    shown = ", ".join(names[:3]) + (f", +{len(names) - 3} more" if len(names) > 3 else "")
    return f"{line}  [run{'s' if len(names) > 1 else ''}: {shown}]"
