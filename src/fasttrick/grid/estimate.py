"""Before a grid trains on a CPU: roughly how long it will take, and how to scale it down when that is long.

The figure is a calibrated per-image cost, not a measurement on this machine: configs/smoke.yaml (width 1/8,
4 096 train and 1 024 test images, 3 epochs, 3 runs) trains in 34-44 s on a 2-core CPU, about 1 ms per
training image with evaluation (forward only) at a third of that. A convolution's cost grows with the square
of the width, so width 1 costs about 64 times more per image. Other CPUs differ by a few times either way;
the per-epoch lines then give the measured ETA."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from .expand import GridRun

CPU_SECONDS_PER_IMAGE = 1.0e-3  # a training image at width 1/8 on the 2-core CPU above
CALIBRATED_WIDTH = 0.125
EVAL_SHARE = 1 / 3  # an evaluated image: forward only
CIFAR10_IMAGES = (50_000, 10_000)  # train, test
LONG_SECONDS = 30 * 60


def on_cpu(device: str) -> bool:
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def cpu_seconds(runs: Sequence[GridRun], epochs_done: Mapping[str, int]) -> float:
    """Estimated seconds for the epochs left of ``runs`` that train on this machine's CPU."""
    total = 0.0
    for run in runs:
        c = run.config
        if not on_cpu(c.train.device):
            continue
        train = c.data.train_subset or CIFAR10_IMAGES[0]
        test = c.data.test_subset or CIFAR10_IMAGES[1]
        per_epoch = (train + EVAL_SHARE * test) * CPU_SECONDS_PER_IMAGE * (c.model.width / CALIBRATED_WIDTH) ** 2
        total += max(c.train.epochs - epochs_done.get(run.name, 0), 0) * per_epoch
    return total


def warn_if_long(runs: Sequence[GridRun], epochs_done: Mapping[str, int], log: Callable[[str], None]) -> float:
    """Log the estimate and the ways to shrink the grid when its CPU runs would take over LONG_SECONDS;
    returns the estimate (seconds, 0 when nothing trains on the CPU)."""
    from ..runfiles import format_duration

    seconds = cpu_seconds(runs, epochs_done)
    if seconds > LONG_SECONDS:
        log(
            f"estimate: the {len(runs)} run(s) would take about {format_duration(seconds)} on this CPU (a rough "
            "figure from a per-image cost calibrated on a 2-core CPU, scaled by images, epochs and width squared; "
            "the epoch lines then give the measured ETA). To scale it down: --epochs N, "
            "--set data.train_subset=4096 --set data.test_subset=1024, --set model.width=0.125, --only 'glob', "
            "or a GPU (--device cuda)"
        )
    return seconds
