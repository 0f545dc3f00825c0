"""Regenerate grids' summaries, plots and run diagnoses, and write REPORT.md across them.

    python -m fasttrick.report runs/group2
    python -m fasttrick.report runs/lr_momentum runs/group2 runs/group3 --out docs/results

For each DIR: DIR/summary.md, DIR/summary.csv, DIR/plots/{val_acc,train_loss,lr}.png and each run's
diagnosis.json (its failure modes: diverged, not_learning, unstable, overfitting, lr_floor). Then REPORT.md:
per study a table (mean ± std over seeds), the plots and the diagnoses, and a verdict (confirmed, refuted,
inconclusive) on each of the post's nine claims, with the runs it rests on. REPORT.md goes into --out, by
default the folder holding the DIRs (their common parent: runs/ above); DIRs whose only common parent is /
need --out.

Every number comes from the run folders' metrics.jsonl, so this works at any time: while a grid is still
running, after it was killed, or on run folders copied from another machine. Exit code 2 when a DIR is not a
grid folder (one `python -m fasttrick.train` wrote: a grid.yaml and run folders), two DIRs hold the same study,
or a folder to write into cannot be written (a read-only DIR or --out).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .results.report import write_report
from .results.runs import NotAGridFolder
from .results.study import ReportError

EXIT_NOT_A_GRID = 2  # the exit code argparse uses for a bad command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fasttrick.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "grid_dirs", metavar="DIR", type=Path, nargs="+", help="a grid's output folder (the train CLI's --out)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for REPORT.md (default: the common parent of the DIRs; required when that is /)",
    )
    args = parser.parse_args(argv)
    try:
        report_path = write_report(args.grid_dirs, args.out)
    except (NotAGridFolder, ReportError) as error:
        print(f"fasttrick.report: {error}", file=sys.stderr)
        return EXIT_NOT_A_GRID
    for grid_dir in args.grid_dirs:
        print(f"wrote {grid_dir / 'summary.md'}, and summary.csv, plots/ and each run's diagnosis.json beside it")
    print(f"wrote {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
