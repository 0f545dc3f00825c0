"""``--workers N``: N units of work (runs, or fused arrays of runs) at once on this machine, one worker
process each, no Ray.

Each worker is a process (forked from a forkserver, or spawned) that lives for the whole grid and trains units one after another
with one :class:`~fasttrick.engine.Session`, so torch.compile is paid once per worker, not per run.
The driver hands a run to whichever worker is idle and forwards the workers' log lines.

- CPU runs train with cpu_threads() torch threads (default 1) as in every executor, so their numbers
  match one process's; other work in a worker gets ``cores // N``. On 2 cores, 2 one-thread workers
  finish 4 smoke runs in less time than 1 two-thread worker (see benchmarks/test_bench_grid.py).
- GPUs: worker i sees GPU ``i % GPUs`` only (CUDA_VISIBLE_DEVICES), so N > GPUs packs several runs
  onto one GPU, after a measured check that they fit (fasttrick.grid.memory).
- A worker that dies (killed, out of host memory) costs its run one retry, resumed from the run's
  last checkpoint in a fresh worker; a second death marks the run interrupted (a rerun resumes it
  again: the cause was outside the run's code). The rest go on.
- Workers die with the driver, even by SIGKILL (a thread polls the driver's pid; Linux also
  PR_SET_PDEATHSIG), so a killed driver leaves no orphan writing into a run folder a rerun resumes.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from ..data import DataSourceError
from ..engine import EpochHook, Interrupted, RunStatus, Session
from . import memory
from .arrays import Unit
from .execute import execute_unit, mark_interrupted
from .expand import GridRun
from .options import SigtermWatch

# A run whose worker died is retried this many times (resumed from its checkpoint), as Ray's
# max_retries does for a task whose worker died; a run that kills its worker every time then ends
# interrupted, for a rerun to resume.
WORKER_DEATH_RETRIES = 1
POLL_SECONDS = 0.5
DRIVER_POLL_SECONDS = 0.5  # a worker outlives a killed driver by at most this
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_gpu_count(runs: Sequence[GridRun]) -> int:
    """GPUs the workers spread over: all visible ones when every run asks for "auto" or "cuda", else 0.

    A run that names a device ("cuda:1", "cpu") keeps it, and the workers then leave the GPUs alone.
    """
    if not all(run.config.train.device in ("auto", "cuda") for run in runs):
        return 0
    import torch

    return torch.cuda.device_count()


def probe_in_subprocess(runs: Sequence[GridRun]) -> list[memory.MemoryProbe]:
    """Peak GPU memory of each run in ``runs``, measured in one fresh process (its CUDA context then freed)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=start_context()) as pool:
        return list(pool.map(memory.probe_run_memory, runs))


def check_packing(runs: Sequence[GridRun], workers: int) -> None:
    """Refuse (memory.DoesNotFit) ``workers`` runs at once when those sharing a GPU would not fit it."""
    gpus = local_gpu_count(runs)
    runs_per_gpu = math.ceil(workers / gpus) if gpus else 0
    if runs_per_gpu >= 2:
        memory.check_fit(probe_in_subprocess(memory.representatives(runs)), runs_per_gpu)


def start_context():
    """forkserver where there is one (Linux, macOS): a server process imports torch and fasttrick once
    (~2.5 s on 2 cores) and forks each worker from it in ~0.1 s; two workers importing torch at once
    took ~5 s. Else spawn. Never fork: it would copy the driver's threads and CUDA state."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def _die_with_parent(driver_pid: int) -> None:
    """Exit when the driver dies, even by SIGKILL. The forkserver, this process's parent, outlives the
    driver, so PR_SET_PDEATHSIG alone does not do: a thread polls the driver's pid as well (every start
    method, every platform)."""
    if sys.platform.startswith("linux"):  # the parent (spawn: the driver) dying kills at once
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while True:
            try:
                os.kill(driver_pid, 0)
            except ProcessLookupError:
                os._exit(1)  # nothing more is written into a run folder a rerun will resume
            except PermissionError:
                pass  # the pid exists (another user's)
            time.sleep(DRIVER_POLL_SECONDS)

    threading.Thread(target=watch, name="fasttrick-driver-watch", daemon=True).start()


def _worker_main(worker_id, threads, gpu, inbox, outbox, on_epoch_end, driver_pid) -> None:
    """A worker process: train the units the driver sends until it sends None."""
    _die_with_parent(driver_pid)
    SigtermWatch()  # a SIGTERM to the process group stops this worker as Ctrl-C does; the driver marks its runs
    if gpu is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    torch.set_num_threads(threads)
    session = Session(log=lambda line: outbox.put(("log", worker_id, line)), bar=False)
    try:
        while (task := inbox.get()) is not None:
            unit, out = task
            try:
                statuses = execute_unit(unit, out, session, on_epoch_end=on_epoch_end)
            except DataSourceError as err:
                outbox.put(("no data", worker_id, unit.name, str(err)))
                return
            except Interrupted as err:
                outbox.put(("interrupted", worker_id, unit.name, str(err)))
                return
            outbox.put(("done", worker_id, unit.name, statuses))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the driver handles it
        return


class _Worker:
    def __init__(self, context, worker_id: int, threads: int, gpu: int | None, outbox, on_epoch_end):
        self.inbox = context.Queue()
        self.process = context.Process(
            target=_worker_main,
            args=(worker_id, threads, gpu, self.inbox, outbox, on_epoch_end, os.getpid()),
            name=f"fasttrick-worker-{worker_id}",
            daemon=True,
        )
        self.process.start()
        self.unit: Unit | None = None
        self.started = 0.0

    def send(self, unit: Unit, out: Path) -> None:
        self.unit, self.started = unit, time.perf_counter()
        self.inbox.put((unit, out))

    def stop(self, timeout: float) -> None:
        if self.process.is_alive():
            self.inbox.put(None)
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


def run_in_workers(
    units: Sequence[Unit],
    out: Path,
    workers: int,
    log: Callable[[str], None],
    on_epoch_end: EpochHook | None,
    prepare: Callable[[], None],
) -> dict[str, RunStatus]:
    """Train ``units`` into ``out`` with ``workers`` processes at once; returns {run name: status}.

    ``prepare()`` (the data cache) runs in this thread while the workers start: starting them waits
    for the forkserver to import torch (~1.4 s), which need not wait for the cache (~0.5 s).
    """
    pool = _Pool(units, out, workers, log, on_epoch_end)
    with concurrent.futures.ThreadPoolExecutor(1) as starter:
        starting = starter.submit(pool.start_all)
        try:
            prepare()
        except BaseException:
            starting.result()
            pool.stop_all()
            raise
        starting.result()
    try:
        while pool.waiting or pool.busy():
            pool.dispatch()
            if not pool.receive():  # drain the queue before looking for dead workers: a "done" may precede a death
                pool.reap_dead()
    finally:
        pool.stop_all()
    return pool.statuses


class _Pool:
    """The driver's side of the workers: who trains what, the queue of units, deaths and statuses."""

    def __init__(
        self, units: Sequence[Unit], out: Path, workers: int, log: Callable[[str], None], on_epoch_end: EpochHook | None
    ):
        self.context = start_context()
        # Threads from the workers asked for, not from the runs left: a run's numerics then do not depend
        # on how many runs a rerun still had to do (2 threads sum a convolution's gradient in another order).
        self.threads = max(1, usable_cores() // workers)
        self.size = min(workers, len(units))
        self.gpus = local_gpu_count([run for unit in units for run in unit.runs])
        self.outbox = self.context.Queue()
        self.units, self.out, self.log, self.on_epoch_end = list(units), out, log, on_epoch_end
        self.runs = [run for unit in units for run in unit.runs]
        self.waiting = deque(units)
        self.deaths: dict[str, int] = {}
        self.statuses: dict[str, RunStatus] = {}
        self.workers: list[_Worker] = []

    def start(self, worker_id: int) -> _Worker:
        gpu = worker_id % self.gpus if self.gpus else None
        return _Worker(self.context, worker_id, self.threads, gpu, self.outbox, self.on_epoch_end)

    def start_all(self) -> None:
        gpus, size = self.gpus, self.size
        where = (
            f"{gpus} GPU(s), {math.ceil(size / gpus)} runs per GPU" if gpus else f"CPU, {self.threads} thread(s) each"
        )
        arrays = sum(unit.fused for unit in self.units)
        in_arrays = f" ({arrays} fused arrays)" if arrays else ""
        self.log(f"{len(self.runs)} runs{in_arrays} on {size} worker processes ({where})")
        self.workers = [self.start(i) for i in range(size)]

    def busy(self) -> bool:
        return any(w.unit is not None for w in self.workers)

    def dispatch(self) -> None:
        for worker_id, worker in enumerate(self.workers):
            if worker.unit is None and self.waiting:
                unit = self.waiting.popleft()
                self.log(f"{unit.name}: started on worker {worker_id}")
                worker.send(unit, self.out)

    def finish(self, worker: _Worker, statuses: dict[str, RunStatus]) -> None:
        self.statuses.update(statuses)
        elapsed = time.perf_counter() - worker.started
        for name, status in statuses.items():
            self.log(f"[{len(self.statuses)}/{len(self.runs)}] {name}: {status} in {elapsed:.1f} s")
        worker.unit = None

    def receive(self) -> bool:
        """Handle one message from a worker; False when none came within POLL_SECONDS."""
        try:
            kind, worker_id, *payload = self.outbox.get(timeout=POLL_SECONDS)
        except queue.Empty:
            return False
        if kind == "log":
            self.log(payload[0])
        elif kind == "done":
            self.finish(self.workers[worker_id], payload[1])
        elif kind == "no data":
            raise DataSourceError(payload[1])
        elif kind == "interrupted":
            raise Interrupted(payload[1])
        return True

    def reap_dead(self) -> None:
        """A dead worker's unit is retried in a fresh worker, resumed from its checkpoints; after
        WORKER_DEATH_RETRIES retries its runs end interrupted (a rerun resumes them)."""
        for worker_id, worker in enumerate(self.workers):
            if worker.unit is None or worker.process.is_alive():
                continue
            unit, reason = worker.unit, f"worker process {worker.process.pid} {_death(worker.process.exitcode)}"
            self.deaths[unit.name] = self.deaths.get(unit.name, 0) + 1
            if self.deaths[unit.name] <= WORKER_DEATH_RETRIES:
                self.log(f"{unit.name}: {reason}; retrying it, resumed from its last checkpoint")
                for run in unit.runs:
                    mark_interrupted(self.out / run.name, f"{reason}; rerun the same command to resume")
                self.waiting.appendleft(unit)
                worker.unit = None
            else:
                message = f"{reason}, {self.deaths[unit.name]} times; rerun the same command to resume"
                for run in unit.runs:
                    mark_interrupted(self.out / run.name, message)
                self.finish(worker, {run.name: RunStatus.INTERRUPTED for run in unit.runs})
            self.workers[worker_id] = self.start(worker_id)

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.unit is not None:  # stopped from outside: interrupted, resumable
                worker.process.kill()
                for run in worker.unit.runs:
                    mark_interrupted(self.out / run.name)
            worker.stop(timeout=10)
