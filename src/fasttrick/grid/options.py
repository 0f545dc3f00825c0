"""How a grid executes (``--executor``, ``--workers``, Ray's shares), checked before anything is written.

Imports no torch: the CLI reads the executor names from here for ``--help``.
"""

from __future__ import annotations

import os
import signal
import threading

from ..config import ConfigError

# Where a grid's runs train: "local" (this process, or --workers N processes) or "ray" (one Ray task per run).
# Not to be confused with a FusedSGDW kernel (fasttrick.ops.KERNEL_BACKENDS, a config's optimizer.backend)
# or a data loader (fasttrick.data.LOADER_BACKENDS, data.loader).
EXECUTORS = ("local", "ray")


def check_execution(
    executor: str, workers: int, address: str | None, gpus_per_run: float | None, cpus_per_run: int
) -> None:
    """Refuse (ConfigError) execution options that cannot work, before anything is written."""
    problems = []
    if executor not in EXECUTORS:
        problems.append(f"executor {executor!r}: must be one of {', '.join(EXECUTORS)}")
    if workers < 1:
        problems.append(f"--workers {workers}: must be >= 1")
    if executor != "ray" and address is not None:
        problems.append("--address is for --executor ray")
    if executor == "ray" and workers != 1:
        problems.append("--workers is for the local executor; Ray runs as many runs at once as its resources allow")
    if gpus_per_run is not None:
        if executor != "ray":
            problems.append("--gpus-per-run is for --executor ray; locally, --workers N packs N runs onto the GPUs")
        elif not 0 < gpus_per_run <= 1:
            problems.append(f"--gpus-per-run {gpus_per_run:g}: a run uses one GPU at most; use 0 < F <= 1")
    if cpus_per_run < 1 or (executor != "ray" and cpus_per_run != 1):
        problems.append(f"--cpus-per-run {cpus_per_run}: for --executor ray, >= 1 (locally: --workers)")
    try:
        cpu_threads()
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ConfigError(problems)


CPU_THREADS_ENV = "FASTTRICK_CPU_THREADS"


def cpu_threads() -> int:
    """Torch threads for a run on the CPU: $FASTTRICK_CPU_THREADS, else 1, in every executor (one process,
    ``--workers``, Ray), so that a run gives the same numbers whichever runs it. ValueError if malformed."""
    value = os.environ.get(CPU_THREADS_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CPU_THREADS_ENV}={value!r}: must be a whole number >= 1 (torch threads per CPU run)")
    return int(value)


class SigtermWatch:
    """SIGTERM (what a cluster's preemption and ``kill`` send) handled as Ctrl-C is: it raises
    KeyboardInterrupt in the main thread, so runs end interrupted, the summary is written and the grid's
    lock released. ``received`` tells the CLI to exit 143 (128 + SIGTERM) rather than Ctrl-C's 130."""

    def __init__(self) -> None:
        self.received = False
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = True
        raise KeyboardInterrupt
