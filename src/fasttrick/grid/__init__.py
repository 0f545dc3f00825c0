"""A grid of runs: expansion of a grid file into validated, named runs, run folders, the local runner.

    from fasttrick.grid import load_grid, run_grid
    grid = load_grid("configs/group2.yaml", profile="quick", overrides=["train.epochs=10"])
    run_grid(grid, "runs/group2")

Results (summary.md/csv, plots) come from fasttrick.grid.summary.write_summary, called when a grid ends.
"""

from ..config import ConfigError
from .expand import PROFILE_DEFAULTS, Grid, GridRun, expand_grid, label, load_grid, parse_overrides, set_path
from .runner import check_out_folder, run_grid

__all__ = [
    "PROFILE_DEFAULTS",
    "ConfigError",
    "Grid",
    "GridRun",
    "check_out_folder",
    "expand_grid",
    "label",
    "load_grid",
    "parse_overrides",
    "run_grid",
    "set_path",
]
