"""``--executor ray`` through a local Ray instance started by these tests (this machine's CPUs, dashboard
off, every service on 127.0.0.1; no external cluster), on the tiny smoke grid of test_grid_workers.py:
two runs at once, the same metrics as the in-process runner (exactly, one thread a run), a worker
SIGKILLed mid-run and its task retried from the checkpoint, a rerun that trains nothing.
Skipped without Ray (pip install "fasttrick[ray]"), except the test of that message.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from test_grid_workers import (  # noqa: F401 (grid_cache, reference_for: fixtures)
    CLI_TINY,
    RUNS,
    SMOKE,
    EpochLog,
    assert_same_metrics,
    grid_cache,
    reference_for,
    tiny_grid,
)

from fasttrick.engine import Session
from fasttrick.grid import run_grid
from fasttrick.train import main

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason='Ray is not installed: pip install "fasttrick[ray]"'
)


@pytest.fixture(scope="module")
def local_ray(grid_cache):  # noqa: F811 (the fixture imported above)
    """A local Ray instance for this module; run_grid(executor="ray") finds it running and leaves it so."""
    from fasttrick.grid.ray_backend import RayCluster

    lines: list[str] = []
    cluster = RayCluster.connect(None, lines.append)
    # Ray workers cannot import this test folder: the test hooks travel by value.
    cluster.ray.cloudpickle.register_pickle_by_value(sys.modules[EpochLog.__module__])
    yield cluster
    cluster.close()


@needs_ray
def test_ray_grid_matches_the_local_runner_and_a_killed_worker_is_retried(
    local_ray,
    reference_for,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    out = tmp_path / "out"
    hook = EpochLog(tmp_path / "epochs.jsonl", meet=2, kill="adamw-cosine-warmup-seed0")
    lines: list[str] = []
    statuses = run_grid(tiny_grid(), out, executor="ray", on_epoch_end=hook, session=Session(log=lines.append))
    assert statuses == dict.fromkeys(RUNS, "finished")
    assert "ray: 3 tasks submitted (3 runs), 1 CPU(s) and 0 GPU(s) each" in lines
    assert hook.ran_concurrently()
    killed = {r["pid"] for r in hook.records() if r["run"] == "adamw-cosine-warmup-seed0"}
    assert len(killed) == 2  # epoch 1 in the worker that was killed, epoch 2 in Ray's retry
    assert_same_metrics(out, reference_for(1))  # a CPU run trains with one torch thread in every executor
    assert not (out / ".fasttrick-ray-storage").exists()

    lines.clear()
    assert run_grid(tiny_grid(), out, executor="ray", session=Session(log=lines.append)) == statuses
    assert sum("finished already, skipped" in line for line in lines) == 3
    assert not any("submitted" in line for line in lines)


def _listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state that ``pids`` hold (Linux /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:  # a process that ended meanwhile
            continue
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.append(fields[1].split(":")[0])
    return addresses


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@needs_ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_local_instance_listens_on_localhost_only(local_ray):
    addresses = _listening_addresses(_descendants(os.getpid()) | {os.getpid()})
    assert addresses, "Ray's GCS and raylet should be listening"
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    assert set(addresses) <= loopback, addresses  # 127.0.0.1, ::ffff:127.0.0.1, ::1 (as /proc writes them)


@needs_ray
@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--gpus-per-run", "0.5"], "the Ray cluster has no GPU"),
        (["--device", "cuda:1"], "train.device cuda:1: with Ray use cuda or auto; Ray gives each task its GPU"),
    ],
)
def test_gpu_requests_the_cluster_cannot_meet_are_refused(local_ray, tmp_path, capsys, extra, problem):
    out = tmp_path / "out"
    assert main(["--config", str(SMOKE), "--out", str(out), *CLI_TINY, "--executor", "ray", *extra]) == 2
    assert problem in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--executor", "--backend"])
def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys, flag):
    """--backend, the flag's old name, still selects the executor, and says it is deprecated."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    out = tmp_path / "out"
    assert main(["--config", str(SMOKE), "--out", str(out), *CLI_TINY, flag, "ray"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "fasttrick[ray]"' in err
    assert ("--backend is deprecated; use --executor ray" in err) == (flag == "--backend")
    assert not out.exists()
