"""``--workers N`` on real CIFAR-10 (FASTTRICK_DATA; 512 images, 1/8 width, 2 epochs): the same metrics as
the in-process runner, a worker killed mid-run and retried from its checkpoint, a stopped grid resumed by
a rerun, --restart-failed, and the GPU memory-fit refusal with simulated probes.

Metrics (all but timings) are compared exactly, against a reference trained in this process with default
settings (deterministic CPU mode): every executor trains a CPU run with the same torch thread count
($FASTTRICK_CPU_THREADS, default 1). Another thread count sums convolution gradients in another order:
after 8 steps the losses then differ in the 4th digit, so the thread count is part of what "the same run"
means, and environment.json records it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from fasttrick.engine import Interrupted, Session
from fasttrick.grid import load_grid, run_grid
from fasttrick.grid import workers as grid_workers
from fasttrick.grid.memory import DoesNotFit, MemoryProbe, check_fit
from fasttrick.train import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
TINY = [
    "train.epochs=2",
    "train.device=cpu",
    "train.deterministic=true",
    "data.train_subset=512",
    "data.test_subset=256",
    "data.batch_size=128",
    "model.width=0.125",
]
CLI_TINY = [arg for item in TINY for arg in ("--set", item)]
RUNS = ["fused_sgdw-step-seed0", "adamw-cosine-warmup-seed0", "sgd-plateau-max-seed0"]
TIMING_KEYS = {"epoch_seconds", "images_per_s", "elapsed_seconds"}
GiB = 2**30


@pytest.fixture(scope="session")
def grid_cache(tmp_path_factory):
    """FASTTRICK_CACHE for the grid tests, its CIFAR-10 cache built once for the session."""
    if not os.environ.get("FASTTRICK_DATA"):
        pytest.skip("FASTTRICK_DATA is unset: point it at a CIFAR-10 archive or folder (see docs/running.md)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTTRICK_CACHE", str(tmp_path_factory.mktemp("fasttrick-cache")))
        from fasttrick.data import load_cifar10

        load_cifar10()
        yield


def tiny_grid():
    return load_grid(SMOKE, overrides=TINY)


@pytest.fixture(scope="session")
def reference_for(grid_cache, tmp_path_factory):
    """reference_for(threads): the tiny smoke grid trained in this process with ``threads`` torch threads a
    run ($FASTTRICK_CPU_THREADS), what every backend must reproduce with that many threads a run."""
    outs: dict[int, Path] = {}

    def train(threads: int) -> Path:
        if threads not in outs:
            out = tmp_path_factory.mktemp(f"reference-{threads}-threads")
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("FASTTRICK_CPU_THREADS", str(threads))
                statuses = run_grid(tiny_grid(), out, session=Session(log=lambda line: None, bar=False), summary=False)
            assert set(statuses.values()) == {"finished"}
            outs[threads] = out
        return outs[threads]

    return train


@pytest.fixture
def reference(reference_for) -> Path:
    """The reference for every executor with default settings: one torch thread a CPU run."""
    return reference_for(1)


def metrics(out: Path, run: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_same_metrics(out: Path, reference: Path, runs=RUNS) -> None:
    for run in runs:
        expected = metrics(reference, run)
        assert len(metrics(out, run)) == len(expected) == 2, run
        assert metrics(out, run) == expected, run


class EpochLog:
    """An on_epoch_end hook that pickles into worker processes. After every epoch it records (run, pid,
    epoch start and end) in ``path``. After epoch 1 it waits (at most 60 s) until ``meet`` processes have
    recorded an epoch, which proves that many train at once; and, once for the named run, SIGKILLs its
    process, raises, or stops it; ``kill_every_epoch`` SIGKILLs the named run's process after every epoch."""

    def __init__(
        self,
        path: Path,
        *,
        meet=1,
        kill: str | None = None,
        fail: str | None = None,
        stop: str | None = None,
        kill_every_epoch: str | None = None,
    ):
        self.path, self.meet, self.kill, self.fail, self.stop = Path(path), meet, kill, fail, stop
        self.kill_every_epoch = kill_every_epoch

    def __call__(self, name: str, row: dict) -> None:
        now = time.time()
        record = {"run": name, "pid": os.getpid(), "start": now - row["epoch_seconds"], "end": now}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if row["epoch"] == 1 and self.meet > 1:
            deadline = now + 60
            while len({r["pid"] for r in self.records()}) < self.meet and time.time() < deadline:
                time.sleep(0.05)
            with self.path.open("a") as f:  # the wait is part of this process's busy span
                f.write(json.dumps({**record, "start": time.time(), "end": time.time()}) + "\n")
        if name == self.kill_every_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        once = self.path.with_name(f"{self.path.name}.{name}.done")
        if row["epoch"] != 1 or name not in (self.kill, self.fail, self.stop) or once.exists():
            return
        once.touch()
        if name == self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        if name == self.fail:
            raise RuntimeError("simulated failure")
        raise Interrupted("simulated stop")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def ran_concurrently(self) -> bool:
        """Two processes trained epochs at overlapping times."""
        spans: dict[int, tuple[float, float]] = {}
        for r in self.records():
            start, end = spans.get(r["pid"], (r["start"], r["end"]))
            spans[r["pid"]] = (min(start, r["start"]), max(end, r["end"]))
        items = list(spans.values())
        return any(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(items) for b in items[i + 1 :])


def test_two_workers_match_the_local_runner_and_a_killed_worker_is_retried(reference, tmp_path):
    hook = EpochLog(tmp_path / "epochs.jsonl", meet=2, kill="adamw-cosine-warmup-seed0")
    lines: list[str] = []
    statuses = run_grid(tiny_grid(), tmp_path / "out", workers=2, on_epoch_end=hook, session=Session(log=lines.append))
    assert statuses == dict.fromkeys(RUNS, "finished")
    log = "\n".join(lines)
    assert "3 runs on 2 worker processes" in log
    assert "adamw-cosine-warmup-seed0: worker process" in log and "killed by SIGKILL; retrying it" in log
    assert "[adamw-cosine-warmup-seed0] resuming after epoch 1" in log
    assert len({r["pid"] for r in hook.records()}) >= 2  # the retry may go to the replacement or the other worker
    assert hook.ran_concurrently()
    assert_same_metrics(tmp_path / "out", reference)
    assert (tmp_path / "out" / "summary.md").is_file()
    for run in RUNS:  # the thread count is part of the recorded environment
        assert json.loads((tmp_path / "out" / run / "environment.json").read_text())["cpu_threads"] == 1


def test_one_process_trains_a_cpu_run_with_the_workers_thread_count_whatever_its_own(reference, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # torch's default on a 2-core machine; workers start with cores // 2
    try:
        statuses = run_grid(tiny_grid(), tmp_path / "out", session=Session(log=lambda line: None, bar=False))
    finally:
        torch.set_num_threads(before)
    assert statuses == dict.fromkeys(RUNS, "finished")
    assert_same_metrics(tmp_path / "out", reference)
    assert json.loads((tmp_path / "out" / RUNS[0] / "environment.json").read_text())["cpu_threads"] == 1


def test_a_stopped_grid_resumes_its_missing_runs_only(reference, tmp_path, capsys):
    out = tmp_path / "out"
    hook = EpochLog(tmp_path / "epochs.jsonl", stop="sgd-plateau-max-seed0")
    with pytest.raises(Interrupted):
        run_grid(tiny_grid(), out, workers=2, on_epoch_end=hook, session=Session(log=lambda line: None))
    states = {run: json.loads((out / run / "status.json").read_text())["status"] for run in RUNS}
    assert states["sgd-plateau-max-seed0"] == "interrupted"
    assert "finished" in states.values()  # the third run starts only after one of the first two ends

    argv = ["--config", str(SMOKE), "--out", str(out), *CLI_TINY, "--workers", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    finished_before = [run for run, state in states.items() if state == "finished"]
    assert printed.count("finished already, skipped") == len(finished_before)
    assert "[sgd-plateau-max-seed0] resuming after epoch 1" in printed
    assert_same_metrics(out, reference)


@pytest.fixture
def worker_threads():
    """This process trains with the threads of one of two workers, to compare with ``reference``."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, grid_workers.usable_cores() // 2))
    yield
    torch.set_num_threads(before)


def test_a_failed_run_is_reported_skipped_on_rerun_and_restarted_on_request(
    reference, worker_threads, tmp_path, capsys
):
    out = tmp_path / "out"
    hook = EpochLog(tmp_path / "epochs.jsonl", fail="fused_sgdw-step-seed0")
    lines: list[str] = []
    statuses = run_grid(tiny_grid(), out, on_epoch_end=hook, session=Session(log=lines.append, bar=False))
    assert statuses["fused_sgdw-step-seed0"] == "failed"
    assert statuses["adamw-cosine-warmup-seed0"] == statuses["sgd-plateau-max-seed0"] == "finished"  # the rest go on
    state = json.loads((out / "fused_sgdw-step-seed0" / "status.json").read_text())
    assert state == {"status": "failed", "epoch": 1, "message": "RuntimeError: simulated failure"}
    assert "failed: fused_sgdw-step-seed0: RuntimeError: simulated failure" in lines

    argv = ["--config", str(SMOKE), "--out", str(out), *CLI_TINY, "--no-bar"]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "fused_sgdw-step-seed0: failed earlier (RuntimeError: simulated failure), skipped" in printed
    assert printed.count("finished already, skipped") == 2

    assert main([*argv, "--restart-failed"]) == 0
    printed = capsys.readouterr().out
    # Its own checkpoint (the same config) is kept: the restart resumes after epoch 1, to the same metrics.
    assert "[1/1] fused_sgdw-step-seed0" in printed and "[fused_sgdw-step-seed0] resuming after epoch 1" in printed
    assert_same_metrics(out, reference)


def test_a_worker_killed_twice_leaves_its_run_interrupted_and_a_rerun_resumes_it(reference, tmp_path, capsys):
    out, run = tmp_path / "out", "fused_sgdw-step-seed0"
    hook = EpochLog(tmp_path / "epochs.jsonl", kill_every_epoch=run)
    statuses = run_grid(tiny_grid(), out, only=[run], workers=2, on_epoch_end=hook, session=Session(log=lambda _: None))
    assert statuses == {run: "interrupted"}
    state = json.loads((out / run / "status.json").read_text())
    assert state["status"] == "interrupted" and state["epoch"] == 2  # the second death came after epoch 2
    assert "killed by SIGKILL, 2 times; rerun the same command to resume" in state["message"]

    argv = ["--config", str(SMOKE), "--out", str(out), *CLI_TINY, "--only", run, "--workers", "2"]
    assert main(argv) == 0
    assert f"[{run}] resuming after epoch 2" in capsys.readouterr().out
    assert_same_metrics(out, reference, runs=[run])


def test_packing_that_does_not_fit_the_gpu_is_refused_before_anything_is_written(
    grid_cache, tmp_path, monkeypatch, capsys
):
    probed = []

    def simulated_probe(runs):
        probed.extend(run.name for run in runs)
        return [MemoryProbe(runs[0].name, 6 * GiB, 10 * GiB, "Simulated GPU")]

    monkeypatch.setattr(grid_workers, "local_gpu_count", lambda runs: 1)
    monkeypatch.setattr(grid_workers, "probe_in_subprocess", simulated_probe)
    out = tmp_path / "out"
    argv = ["--config", str(SMOKE), "--out", str(out), *CLI_TINY, "--device", "cuda", "--workers", "2"]
    assert main(argv) == 2
    assert (
        "refused: 2 runs per GPU do not fit: run 'fused_sgdw-step-seed0' peaks at 6.00 GiB" in capsys.readouterr().err
    )
    assert probed == RUNS  # one probe per footprint: three optimizers, three sizes of optimizer state
    assert not out.exists()


def test_fit_check_figures():
    check_fit([MemoryProbe("a", 4 * GiB, 10 * GiB, "GPU")], 2)  # 8 GiB <= 90% of 10 GiB
    check_fit([MemoryProbe("a", 6 * GiB, 10 * GiB, "GPU")], 1)  # nothing packed, nothing to check
    with pytest.raises(DoesNotFit) as err:
        check_fit([MemoryProbe("a", 2 * GiB, 10 * GiB, "GPU"), MemoryProbe("b", 4 * GiB, 10 * GiB, "GPU")], 4)
    message = str(err.value)
    assert "run 'b' peaks at 4.00 GiB" in message and "4 x 4.00 GiB = 16.00 GiB > 9.00 GiB" in message
    assert "pack at most 2 per GPU (--gpus-per-run 0.5" in message
    with pytest.raises(DoesNotFit, match=r"one run alone does not fit: lower data\.batch_size or model\.width"):
        check_fit([MemoryProbe("a", 12 * GiB, 10 * GiB, "GPU")], 2)


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--workers", "0"], "--workers 0: must be >= 1"),
        (["--gpus-per-run", "0.5"], "--gpus-per-run is for --executor ray"),
        (["--address", "auto"], "--address is for --executor ray"),
        (["--executor", "ray", "--gpus-per-run", "2"], "--gpus-per-run 2: a run uses one GPU at most"),
        (["--executor", "ray", "--workers", "2"], "--workers is for the local executor"),
    ],
)
def test_bad_execution_options_are_refused_before_anything_is_written(tmp_path, capsys, extra, problem):
    out = tmp_path / "out"
    assert main(["--config", str(SMOKE), "--out", str(out), *CLI_TINY, *extra]) == 2
    assert problem in capsys.readouterr().err
    assert not out.exists()


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc), the forkserver's workers included."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found |= {child, *_descendants(child)}
    return found


def _start_training(out: Path, *extra: str):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "fasttrick.train", "--config", str(SMOKE), "--out", str(out), *CLI_TINY]
    proc = subprocess.Popen([*cmd, "--set", "train.epochs=20", "--no-bar", *extra], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # until a run has written an epoch
        if any((out / run / "metrics.jsonl").is_file() for run in RUNS):
            return proc
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no run trained an epoch within 240 s")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads process trees from Linux /proc")
def test_workers_stop_within_seconds_of_their_driver_killed_by_sigkill(grid_cache, tmp_path):
    proc = _start_training(tmp_path / "out", "--workers", "2")
    below = _descendants(proc.pid)
    assert below
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in below):
        time.sleep(0.1)
    alive = [
        pid
        for pid in below
        if Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    ]
    assert not alive, f"still running 10 s after the driver died: {alive}"


@pytest.mark.parametrize("extra", [(), ("--workers", "2")], ids=["local", "workers"])
def test_sigterm_is_an_interruption(grid_cache, tmp_path, extra):
    from fasttrick.grid.folder import lock_grid_folder

    out = tmp_path / "out"
    proc = _start_training(out, *extra)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    statuses = {json.loads((out / run / "status.json").read_text())["status"] for run in RUNS}
    assert "interrupted" in statuses and "running" not in statuses
    assert (out / "summary.md").is_file()
    lock_grid_folder(out).release()  # the lock was released
