"""Regenerate a grid's summary.md, summary.csv and plots/ from its run folders.

    python -m fasttrick.report runs/group2

Every number comes from the run folders' metrics.jsonl, so this works at any time: while a grid is still
running, after it was killed, or on run folders copied from another machine. Exit code 2 when DIR is not a grid
folder (one `python -m fasttrick.train` wrote: a grid.yaml and run folders).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .grid.summary import NotAGridFolder, write_summary

EXIT_NOT_A_GRID = 2  # the exit code argparse uses for a bad command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fasttrick.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes DIR/summary.md, DIR/summary.csv and DIR/plots/{val_acc,train_loss,lr}.png.",
    )
    parser.add_argument("grid_dir", metavar="DIR", type=Path, help="a grid's output folder (the train CLI's --out)")
    args = parser.parse_args(argv)
    try:
        summary_path = write_summary(args.grid_dir)
    except NotAGridFolder as error:
        print(f"fasttrick.report: {error}", file=sys.stderr)
        return EXIT_NOT_A_GRID
    print(f"wrote {summary_path}, and summary.csv and plots/ beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
