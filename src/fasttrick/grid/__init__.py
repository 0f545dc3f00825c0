"""A grid of runs: expansion of a grid file into validated, named runs, executing them into run folders.

    from fasttrick.grid import load_grid, run_grid
    grid = load_grid("configs/group2.yaml", profile="quick", overrides=["train.epochs=10"])
    run_grid(grid, "runs/group2")

- :mod:`.expand`: grid file -> validated runs (pydantic, no torch);
- :mod:`.options`: the execution options (executors, workers) and their checks (no torch);
- :mod:`.folder`: the grid folder: its lock, config checks, run states, temp-file sweep;
- :mod:`.execute`: one run into its folder, the per-run function of every executor;
- :mod:`.runner`: the local runner, and the entry point :func:`run_grid`; :mod:`.workers`, :mod:`.ray_backend`.

Names are imported on first use, so ``import fasttrick.grid.expand`` (or the CLI's ``--help``) does not
load torch through the runner.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PROFILE_DEFAULTS": "..config",
    "ConfigError": "..config",
    "Grid": ".expand",
    "GridRun": ".expand",
    "expand_grid": ".expand",
    "label": ".expand",
    "load_grid": ".expand",
    "parse_overrides": ".expand",
    "set_path": ".expand",
    "check_out_folder": ".folder",
    "run_grid": ".runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
