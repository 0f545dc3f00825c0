"""How a grid executes (``--backend``, ``--workers``, Ray's shares), checked before anything is written.

Imports no torch: the CLI reads the backend names from here for ``--help``.
"""

from __future__ import annotations

from ..config import ConfigError

BACKENDS = ("local", "ray")


def check_execution(
    backend: str, workers: int, address: str | None, gpus_per_run: float | None, cpus_per_run: int
) -> None:
    """Refuse (ConfigError) execution options that cannot work, before anything is written."""
    problems = []
    if backend not in BACKENDS:
        problems.append(f"backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if workers < 1:
        problems.append(f"--workers {workers}: must be >= 1")
    if backend != "ray" and address is not None:
        problems.append("--address is for --backend ray")
    if backend == "ray" and workers != 1:
        problems.append("--workers is for the local backend; Ray runs as many runs at once as its resources allow")
    if gpus_per_run is not None:
        if backend != "ray":
            problems.append("--gpus-per-run is for --backend ray; locally, --workers N packs N runs onto the GPUs")
        elif not 0 < gpus_per_run <= 1:
            problems.append(f"--gpus-per-run {gpus_per_run:g}: a run uses one GPU at most; use 0 < F <= 1")
    if cpus_per_run < 1 or (backend != "ray" and cpus_per_run != 1):
        problems.append(f"--cpus-per-run {cpus_per_run}: for --backend ray, >= 1 (locally: --workers)")
    if problems:
        raise ConfigError(problems)
