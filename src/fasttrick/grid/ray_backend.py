"""``--executor ray``: the grid's units of work (runs, or fused arrays of runs) as Ray tasks, on a laptop (a local Ray instance) or a cluster.

Ray core tasks, not Ray Tune trials: the grid is already expanded and validated, and its run folders,
resume rules and summary are fasttrick's own (see fasttrick.grid.runner). What Ray adds is placement:
each run is one task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (0.5 packs two runs
per GPU), scheduled wherever a node has them. Tune would add a second experiment folder, its own trial
names and restore rules, and a chdir into trial folders, none of which this grid needs; ``ray`` alone
is also a smaller install than ``ray[tune]``.

- Every task trains one unit with the same function as the local backend (:func:`fasttrick.grid.execute.execute_unit`)
  and writes into ``<out>/<run name>/`` for each of its runs. On a cluster ``--out`` must be a filesystem every node mounts at
  the same path (NFS, Lustre, ...): a task checks that it sees the driver's marker file there and
  fails its run with that message if not.
- Ray reuses a worker process for later tasks, so torch.compile is paid once per worker process.
- A task whose worker process dies (killed, out of host memory) is retried once by Ray
  (``max_retries=1``) and resumes from the run's last checkpoint; a second death ends the run
  interrupted, which a rerun resumes. An exception in a run is not retried: it is a failed run,
  reported with its error. Rerunning the command resumes the rest.
- The driver holds the grid folder's lock (fasttrick.grid.folder) for the grid's life; tasks write
  their run folders under it.
- A local instance starts with the dashboard off and every service on 127.0.0.1 (when this module
  is what first imports ray).
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data import CACHE_ENV, DATA_ENV
from ..engine import EpochHook, Interrupted, RunStatus, Session
from . import memory
from .arrays import Unit
from .execute import execute_unit, mark_interrupted
from .expand import GridRun
from .options import CPU_THREADS_ENV, cpu_threads

INSTALL_HINT = 'the ray backend needs Ray: pip install "fasttrick[ray]"'
# A task whose worker process died is run once more (resuming from its checkpoint); see the docstring.
WORKER_DEATH_RETRIES = 1
STORAGE_MARKER = ".fasttrick-ray-storage"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

_worker_session: Session | None = None  # one per Ray worker process, reused by its later tasks


class RayUnavailable(RuntimeError):
    """``--executor ray`` without Ray installed."""


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise RayUnavailable(f"{INSTALL_HINT} ({err})") from err
    return ray


def _train_task(
    unit: Unit, out: Path, marker: Path, threads: int, cpu_run_threads: int, on_epoch_end: EpochHook | None
):
    """One unit on a Ray worker: the body of the remote function (see RayCluster.run). ``cpu_run_threads``:
    the driver's cpu_threads(), which a node of a cluster does not read from the driver's environment."""
    os.environ[CPU_THREADS_ENV] = str(cpu_run_threads)
    global _worker_session
    started = time.time()
    if not marker.is_file():
        raise RuntimeError(
            f"{marker.parent} is not visible from host {socket.gethostname()}: on a cluster, --out must be "
            "a shared filesystem mounted at the same path on every node"
        )
    import torch

    torch.set_num_threads(threads)
    if _worker_session is None:
        _worker_session = Session(bar=False)  # lines go to the worker's stdout, which Ray forwards to the driver
    statuses = execute_unit(unit, out, _worker_session, on_epoch_end=on_epoch_end)
    return {
        "statuses": statuses,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "ended": time.time(),
    }


class RayCluster:
    """A connection to Ray for one grid: a local instance started here, or a running cluster."""

    def __init__(self, ray, log: Callable[[str], None], started_here: bool, connected_at: float):
        # connected_at: time.time() when connect() began; tasks report their start on the same clock
        self.ray = ray
        self.log = log
        self.started_here = started_here
        self.connected_at = connected_at

    @classmethod
    def connect(cls, address: str | None, log: Callable[[str], None]) -> RayCluster:
        """``address`` None: a local Ray instance (or the one this process already started); "auto" or
        HOST:PORT: a running cluster (``ray start --head`` on the head node)."""
        if address is None:
            # A local instance serves this machine only. Ray's no-cluster mode (its default on macOS and
            # Windows) binds GCS, raylet and workers to 127.0.0.1 instead of every interface; Ray reads
            # this when it is first imported.
            os.environ.setdefault(LOCAL_ONLY_ENV, "0")
        ray = import_ray()
        start = time.time()
        if ray.is_initialized():  # the caller's own ray.init (a notebook, a test): used and left running
            return cls(ray, log, False, start)
        env_vars = {
            name: str(Path(os.environ[name]).absolute()) for name in (DATA_ENV, CACHE_ENV) if name in os.environ
        }
        options: dict[str, Any] = dict(runtime_env={"env_vars": env_vars}, log_to_driver=True)
        if address is None:
            options.update(include_dashboard=False)
        ray.init(address=address, **options)
        resources = ray.cluster_resources()
        log(
            f"ray: {'local instance' if address is None else address}, {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs, ready in {time.time() - start:.1f} s"
        )
        return cls(ray, log, True, start)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()

    def gpus(self) -> float:
        return self.ray.cluster_resources().get("GPU", 0)

    def gpus_per_task(self, runs: Sequence[GridRun], gpus_per_run: float | None) -> float:
        """Ray hides every GPU from a task that asks for none, so a run meant for a GPU must ask for one."""
        indexed = sorted({run.config.train.device for run in runs if run.config.train.device.startswith("cuda:")})
        if indexed:
            raise ConfigError([f"train.device {indexed[0]}: with Ray use cuda or auto; Ray gives each task its GPU"])
        wants_gpu = any(run.config.train.device == "cuda" for run in runs)
        may_use_gpu = all(run.config.train.device != "cpu" for run in runs)
        if gpus_per_run is not None or wants_gpu:
            if not self.gpus():
                raise ConfigError(["the Ray cluster has no GPU: drop --gpus-per-run, or use --device cpu"])
            return gpus_per_run if gpus_per_run is not None else 1.0
        return 1.0 if may_use_gpu and self.gpus() else 0.0

    def check_packing(self, runs: Sequence[GridRun], gpus_per_run: float | None) -> None:
        """Refuse (memory.DoesNotFit) a fractional GPU share too small for a run's measured peak memory."""
        share = self.gpus_per_task(runs, gpus_per_run)
        runs_per_gpu = math.floor(1 / share + 1e-9) if share else 0
        if runs_per_gpu < 2:
            return
        # One whole GPU per probe, and max_calls=1: the probe's worker exits and frees its CUDA context.
        probe = self.ray.remote(num_gpus=1, max_calls=1)(memory.probe_run_memory)
        probes = self.ray.get([probe.remote(run) for run in memory.representatives(runs)])
        memory.check_fit(probes, runs_per_gpu)

    def run(
        self,
        units: Sequence[Unit],
        out: Path,
        gpus_per_run: float | None,
        cpus_per_run: int,
        on_epoch_end: EpochHook | None,
    ) -> dict[str, RunStatus]:
        """One task per unit, all submitted at once; Ray runs as many at once as the resources allow."""
        ray = self.ray
        runs = [run for unit in units for run in unit.runs]
        gpus = self.gpus_per_task(runs, gpus_per_run)
        marker = out / STORAGE_MARKER
        marker.write_text(uuid.uuid4().hex)
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus, max_retries=WORKER_DEATH_RETRIES)(_train_task)
        pending = {task.remote(unit, out, marker, cpus_per_run, cpu_threads(), on_epoch_end): unit for unit in units}
        self.log(
            f"ray: {len(units)} tasks submitted ({len(runs)} runs), {cpus_per_run} CPU(s) and {gpus:g} GPU(s) each"
        )
        statuses: dict[str, RunStatus] = {}
        first_start = None
        try:
            while pending:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(ready)
                try:
                    report = ray.get(ready)
                except (Interrupted, KeyboardInterrupt):
                    raise
                except ray.exceptions.RayError as err:
                    # Not the run's own exception (execute_run records those): its worker died twice,
                    # the storage check failed, or the node went away. Resumable by a rerun.
                    cause = getattr(err, "cause", None) or err
                    message = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0]}"
                    for run in unit.runs:
                        mark_interrupted(out / run.name, f"{message}; rerun the same command to resume")
                        statuses[run.name] = RunStatus.INTERRUPTED
                        self.log(f"[{len(statuses)}/{len(runs)}] {run.name}: interrupted ({message})")
                    continue
                statuses.update(report["statuses"])
                if first_start is None or report["started"] < first_start:
                    first_start = report["started"]
                for name, status in report["statuses"].items():
                    self.log(
                        f"[{len(statuses)}/{len(runs)}] {name}: {status} in "
                        f"{report['ended'] - report['started']:.1f} s (host {report['host']}, pid {report['pid']})"
                    )
            if first_start is not None:
                self.log(f"ray: the first run started {first_start - self.connected_at:.1f} s after connecting to Ray")
        finally:
            for ref, unit in pending.items():  # interrupted: stop the rest, keep them resumable
                ray.cancel(ref, force=True)
                for run in unit.runs:
                    mark_interrupted(out / run.name)
            marker.unlink(missing_ok=True)
        return statuses
