"""Run a study: ``python -m fasttrick.train --config configs/group1.yaml``.

Reruns every run of the grid file into ``runs/<config name>/`` (one folder per run, then
summary.md, summary.csv and plots/); rerunning the same command skips finished runs and resumes
the others. A bad config is refused, whole, before anything is written (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from .runfiles import RunStatus  # no torch, no study extra

EXAMPLES = """\
examples:
  python -m fasttrick.train --config configs/smoke.yaml                    # CPU, < 2 minutes
  python -m fasttrick.train --config configs/group2.yaml --dry-run         # list the runs, train nothing
  python -m fasttrick.train --config configs/group1.yaml --profile faithful   # the post's 200 epochs
  python -m fasttrick.train --config configs/l2.yaml --only 'wd0.01-*' --set optimizer.lr=0.05
  python -m fasttrick.train --config configs/smoke.yaml --sweep optimizer.lr=0.05,0.1 --sweep seed=0,1 --dry-run
  python -m fasttrick.train --config configs/smoke.yaml --workers 2               # 2 runs at once, 1 thread each
  python -m fasttrick.train --config configs/lr_momentum.yaml --fuse 4     # 4 runs as one fused network
  python -m fasttrick.train --config configs/group2.yaml --executor ray --gpus-per-run 0.5   # local Ray, 2 runs/GPU
  python -m fasttrick.train --config configs/group2.yaml --executor ray --address auto --out /nfs/runs/group2
  python -m fasttrick.report runs/group2                                   # summary and plots again

config keys (see src/fasttrick/config/schema.py): seed, data.{root,loader,batch_size,train_subset,test_subset},
model.{width,channels_last}, train.{epochs,device,precision,compile,compile_mode,compile_backend,
deterministic,label_smoothing}, optimizer.{name: fused_sgdw|sgd|adam|adamw|nadam, lr, momentum, ...},
scheduler.{name: step|multistep|cosine|cosine_restarts|plateau|constant, ...}, warmup.{epochs,start_factor}.
Epoch counts of schedules take whole epochs (70) or a share of the run ("35%").

A rerun skips finished runs, resumes interrupted ones, and reports failed ones (--restart-failed
starts them over).

exit status: 0 all selected runs finished or diverged; 1 a run failed or was interrupted (disk full, a
worker killed twice: rerun the same command to resume); 2 bad config or arguments, an unusable --out
(a file, read-only with runs to train, held by another trainer, a malformed run file), or runs that
would not fit the GPU's memory; 130 interrupted (rerun the same command to resume).
"""


class _DeprecatedBackend(argparse.Action):
    """``--backend local|ray``, the old name of ``--executor``: it read like a config's optimizer.backend (the
    FusedSGDW kernel). It still works, and says so."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use --executor {values}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: they need the study extra, which main() checks for first.
    from .config import PROFILE_DEFAULTS
    from .grid.options import EXECUTORS

    p = argparse.ArgumentParser(
        prog="python -m fasttrick.train",
        description="\n\n".join(textwrap.fill(" ".join(part.split()), 100) for part in __doc__.split("\n\n")[:2]),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="NAME|FILE",
        help="a built-in study by name (e.g. group1; see --list) or a grid file (YAML), e.g. my_grid.yaml",
    )
    p.add_argument("--list", action="store_true", help="list the built-in studies, one line each, and exit")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder of the grid (default: runs/<config file stem>); the same folder resumes",
    )
    p.add_argument(
        "--profile",
        choices=tuple(PROFILE_DEFAULTS),
        default="quick",
        help="quick (default): <= 30 epochs a run, schedules scaled to keep the post's shape; "
        "faithful: the post's 200 epochs (StepLR every 70)",
    )
    p.add_argument(
        "--epochs", type=int, metavar="N", help="train.epochs for every run (schedules given as shares scale with it)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted config key in every run, after the grid's own values; repeatable "
        "(e.g. --set optimizer.lr=0.05 --set data.batch_size=256); VALUE is YAML",
    )
    p.add_argument(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="add a grid axis: one run per value, crossed with the grid's axes and the other --sweeps; repeatable "
        "(e.g. --sweep optimizer.lr=0.05,0.1,0.2 --sweep optimizer.momentum=0.5,0.9); values are YAML",
    )
    p.add_argument("--device", metavar="DEV", help="auto (default: cuda when available), cpu, cuda or cuda:N")
    p.add_argument(
        "--only",
        action="append",
        metavar="GLOB",
        help="run only the runs whose name matches (shell glob, comma-separated or repeated); see --dry-run for names",
    )
    p.add_argument("--fresh", action="store_true", help="delete the selected runs' folders and start them over")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the expanded grid; write and train nothing"
    )
    p.add_argument("--no-bar", action="store_true", help="plain log lines even on a terminal")
    p.add_argument(
        "--restart-failed",
        action="store_true",
        help="start failed runs over (a rerun otherwise skips them and reports their error)",
    )
    p.add_argument(
        "--fuse",
        default="off",
        metavar="auto|off|K",
        help="train runs that differ only in optimizer hyper-parameters, schedule and warm-up side by side "
        "as one fused network of up to K members (auto: when this machine's measured gain says so); "
        "off (default): each run alone",
    )
    run = p.add_argument_group("where runs train (default: one after another in this process)")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N runs at once on this machine, one process each (CPU: cores/N threads each; GPUs: "
        "worker i on GPU i %% GPUs, packing checked against the GPU's memory)",
    )
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help='local (default) or ray: one Ray task per run (pip install "fasttrick[ray]"); on a cluster '
        "--out must be a filesystem every node shares",
    )
    run.add_argument(
        "--backend", dest="executor", choices=EXECUTORS, action=_DeprecatedBackend, help="deprecated: --executor"
    )
    run.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="Ray cluster to join (default: a local Ray instance; auto: the cluster `ray start` runs here)",
    )
    run.add_argument(
        "--gpus-per-run",
        type=float,
        metavar="F",
        help="Ray: GPU share of a run, 0 < F <= 1 (0.5 packs two runs per GPU, after a measured memory "
        "check); default 1 when the cluster has GPUs",
    )
    run.add_argument(
        "--cpus-per-run", type=int, default=1, metavar="N", help="Ray: CPUs (and torch threads) of a run (default 1)"
    )
    return p


def describe(grid, selected, out: Path) -> str:
    from .config import resolve_epochs

    lines = [f"grid {grid.name!r} ({grid.profile} profile): {len(grid.runs)} runs, {len(selected)} selected -> {out}"]
    header = ("run", "optimizer", "lr", "momentum", "wd", "schedule", "warmup", "epochs", "seed")
    table = [header]
    for run in selected:
        c = run.config
        o, s = c.optimizer, c.scheduler
        sched = s.name
        epochs = c.train.epochs
        if s.name == "step":
            sched += f"(every {resolve_epochs(s.step_size, epochs, minimum=1)}, x{s.gamma:g})"
        elif s.name == "multistep":
            sched += f"(at {[resolve_epochs(m, epochs, minimum=1) for m in s.milestones]}, x{s.gamma:g})"
        elif s.name == "cosine":
            sched += f"(eta_min {s.eta_min:g})"
        elif s.name == "cosine_restarts":
            sched += f"(t_0 {resolve_epochs(s.t_0, epochs, minimum=1)}, x{s.t_mult})"
        elif s.name == "plateau":
            sched += f"({s.mode} {s.monitor}, x{s.factor:g}, patience {resolve_epochs(s.patience, epochs)}, min_lr {s.min_lr:g})"
        momentum = getattr(o, "momentum", None)
        table.append(
            (
                run.name,
                o.name,
                f"{o.lr:g}",
                "-" if momentum is None else f"{momentum:g}",
                f"{o.weight_decay:g}",
                sched,
                str(c.warmup_epochs()),
                str(epochs),
                str(c.seed),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines += [f"warning: {note}" for note in grid.warnings]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if isinstance(args, int):  # nothing to train: the exit status
        return args
    # Imports after parsing: --help does not wait for the engine, data and Ray modules.
    from .config import ConfigError
    from .data import DataSourceError
    from .engine import CheckpointError, Interrupted, Session
    from .grid import load_grid, run_grid
    from .grid.folder import GridFolderError
    from .grid.memory import DoesNotFit
    from .grid.options import SigtermWatch
    from .grid.ray_backend import RayUnavailable

    sigterm = SigtermWatch()
    try:
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError([f"--epochs {args.epochs}: must be >= 1"])
        grid = load_grid(args.config, only=args.only, **_command_line_layers(args))
        out = args.out or Path("runs") / args.config.stem
        selected = grid.select(args.only)
        from .grid.arrays import parse_fuse

        fuse = parse_fuse(args.fuse)
        if args.dry_run:
            return _dry_run(grid, selected, out, args.fresh, fuse)
        print(describe(grid, selected, out), flush=True)
        statuses = run_grid(
            grid,
            out,
            only=args.only,
            fresh=args.fresh,
            restart_failed=args.restart_failed,
            session=Session(bar=False if args.no_bar or args.workers > 1 or args.executor == "ray" else None),
            executor=args.executor,
            workers=args.workers,
            address=args.address,
            gpus_per_run=args.gpus_per_run,
            cpus_per_run=args.cpus_per_run,
            fuse=fuse,
        )
    except ConfigError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2
    except (DoesNotFit, RayUnavailable, GridFolderError, CheckpointError) as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    except DataSourceError as err:
        print(f"no CIFAR-10: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 143 if sigterm.received else 130
    return _report_statuses(statuses, out)


def _command_line_layers(args: argparse.Namespace) -> dict:
    """load_grid's keywords from the command line: what it layers over the grid file."""
    return {
        "profile": args.profile,
        "overrides": args.overrides,
        "epochs": args.epochs,
        "device": args.device,
        "sweeps": args.sweeps,
    }


def _arguments(argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, --config NAME|FILE made the grid file; or the exit status when there is nothing to
    train: the study extra missing (2), --list printed the built-in studies (0), an unknown study (2, listed)."""
    from . import studies
    from ._backend import study_extra_error

    if (missing := study_extra_error()) is not None:  # `pip install fasttrick` alone: the optimizer only
        print(f"python -m fasttrick.train: {missing}", file=sys.stderr)
        return 2
    cli = parser()
    args = cli.parse_args(argv)
    if args.list:
        print(f"built-in studies (python -m fasttrick.train --config NAME), in {studies.config_dir()}:")
        print(studies.listing())
        return 0
    if args.config is None:
        cli.error("--config NAME|FILE is required (python -m fasttrick.train --list shows the built-in studies)")
    try:
        args.config = studies.resolve(args.config)
    except studies.UnknownStudy as err:
        print(err, file=sys.stderr)
        return 2
    return args



def _dry_run(grid, selected, out: Path, fresh: bool, fuse: str | int) -> int:
    """--dry-run: check the folder, print the runs and the arrays; train and write nothing."""
    from .grid.arrays import describe_plan
    from .grid.folder import check_out_folder
    from .grid.limits import check_limits

    check_limits(selected, out)
    check_out_folder(selected, out, fresh)
    print(describe(grid, selected, out))
    print("\n".join(describe_plan(selected, fuse)))
    from .grid.estimate import warn_if_long

    warn_if_long(selected, {}, print)  # what the run would say before training
    return 0


def _report_statuses(statuses: dict[str, RunStatus], out: Path) -> int:
    """Prints how the grid's runs ended and where to look next; the exit code: 1 if any failed or was
    interrupted, else 0."""
    counts = {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))}
    print("done: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if (out / "summary.md").is_file():
        print(f"summary: {out / 'summary.md'}  plots: {out / 'plots'}/")
        print(f"report (with the study's claims): python -m fasttrick.report {out}")
    if RunStatus.INTERRUPTED in statuses.values():
        print("interrupted runs resume from their last checkpoint: rerun the same command", file=sys.stderr)
    return 1 if {RunStatus.FAILED, RunStatus.INTERRUPTED} & set(statuses.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
