"""FusedSGDW in distributed training, and its checkpoints interchanging with torch.optim.SGD.

The multi-process cases (DDP, ZeRO, FSDP2, tensor parallel, DCP; tests/dist_cases.py) run in one
pair of gloo processes on 127.0.0.1 started once for this module; each case is a test here that
fails with the rank's traceback. A rank that dies, or a pair that outlives the time limit, fails
every case it did not finish, with both ranks' output.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fasttrick import FusedSGDW, available_backends

from dist_cases import CASES
from sgdw_helpers import FP32_TOL, assert_params_close, grad_stream, make_params, run_steps

WORLD_SIZE = 2
# The whole pair, imports included: 70-85 s on 2 cores shared with other jobs (about 35 s of CPU);
# a hang is stopped well inside CI's 90 minutes.
TIMEOUT_S = 600
HERE = Path(__file__).parent

SHAPES = [(127,), (16, 8, 3, 3), (10,)]
HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
BACKENDS = available_backends("cpu")


def _run_pair(tmp: Path, script: Path = HERE / "dist_cases.py") -> tuple[list[dict[str, str | None]], str]:
    """Runs `script` (dist_cases.py's command line) on WORLD_SIZE ranks; returns each rank's
    {case: traceback or None} and, when a rank failed or the pair timed out, both ranks' output."""
    # gloo on the loopback interface (127.0.0.1); one thread per rank, as two ranks share 2 cores.
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), *sys.path]))
    logs = [tmp / f"rank{r}.log" for r in range(WORLD_SIZE)]
    # A file store: the rendezvous needs no port; gloo's own connections take free ones on lo.
    cmd = [sys.executable, str(script), "", str(WORLD_SIZE), str(tmp / "store"), str(tmp)]
    procs = []
    for rank, log in enumerate(logs):
        cmd[2] = str(rank)
        with log.open("w") as out:
            procs.append(subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT))
    failure = ""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for rank, proc in enumerate(procs):
            if proc.wait(timeout=max(deadline - time.monotonic(), 0)) != 0:
                failure += f"rank {rank} exited with {proc.returncode}\n"
    except subprocess.TimeoutExpired:
        failure = f"the ranks did not finish within {TIMEOUT_S} s\n"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failure:
        failure += "".join(f"--- rank {r} output (tail) ---\n{log.read_text()[-4000:]}\n" for r, log in enumerate(logs))
    results = []
    for rank in range(WORLD_SIZE):
        path = tmp / f"rank{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    return results, failure


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _run_pair(tmp_path_factory.mktemp("dist"))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes(pair, case):
    results, failure = pair
    for rank, result in enumerate(results):
        if case not in result:
            pytest.fail(f"rank {rank} did not run {case}\n{failure}")
        if result[case] is not None:
            pytest.fail(f"rank {rank}:\n{result[case]}")


CRASH = """
import sys
from datetime import timedelta

import torch.distributed as dist

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=f"file://{sys.argv[3]}", rank=rank, world_size=int(sys.argv[2]),
                        timeout=timedelta(seconds=60))
if rank == 1:
    raise RuntimeError("rank 1 crashed on purpose")
dist.barrier()  # waits for the rank that is gone
"""


@pytest.mark.slow
def test_a_crashed_rank_fails_the_pair_with_its_traceback(tmp_path):
    """The harness itself: the crash is reported with its traceback, and the survivor fails rather
    than waiting for it (its exit, not the pair's time limit, ends the run)."""
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    _, failure = _run_pair(tmp_path, script)
    assert "rank 1 exited with 1" in failure
    assert "RuntimeError: rank 1 crashed on purpose" in failure
    assert "rank 0 exited with" in failure, failure


# --- single process: torch.save / torch.load(weights_only=True) and the saved format -----------------------


def _through_file(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_save_to_torch_sgd_and_back(backend):
    """SGD -> file -> FusedSGDW -> file -> SGD, with weights_only loads, continues like SGD alone; each
    optimizer is built with another lr, so the hyperparameters come from the file."""
    grads = grad_stream(SHAPES, 9)
    alone = make_params(SHAPES)
    run_steps(torch.optim.SGD(alone, **HYPER), alone, grads)

    params = make_params(SHAPES)
    sgd = torch.optim.SGD(params, **HYPER)
    run_steps(sgd, params, grads[:3])
    fused = FusedSGDW(params, backend=backend, lr=0.5)
    fused.load_state_dict(_through_file(sgd.state_dict()))
    assert fused.param_groups[0]["backend"] == backend
    run_steps(fused, params, grads[3:6])
    sgd = torch.optim.SGD(params, lr=0.5)
    sgd.load_state_dict(_through_file(fused.state_dict()))
    run_steps(sgd, params, grads[6:])
    assert_params_close(params, alone, **FP32_TOL)


def test_saved_groups_have_torch_sgd_keys():
    """DCP loads the receiving optimizer's keys and fails on any missing: the key sets must be equal."""
    params = make_params(SHAPES)
    sgd_keys = set(torch.optim.SGD(params, **HYPER).state_dict()["param_groups"][0])
    fused = FusedSGDW(params, backend="triton" if "triton" in BACKENDS else "reference", **HYPER)
    assert set(fused.state_dict()["param_groups"][0]) == sgd_keys
    decoupled = FusedSGDW(params, decoupled_weight_decay=True, **HYPER)
    assert set(decoupled.state_dict()["param_groups"][0]) == sgd_keys - {"weight_decay"} | {"decoupled_weight_decay"}
    # Decoupled decay at rate 0 is torch's math: saved in torch's form.
    no_decay = FusedSGDW(params, decoupled_weight_decay=True, lr=0.1)
    assert set(no_decay.state_dict()["param_groups"][0]) == sgd_keys


def test_decoupled_state_into_torch_sgd_fails_and_round_trips():
    """torch.optim.SGD cannot run decoupled decay: its step fails on the state instead of running L2.
    A FusedSGDW loads the same state and continues the run exactly."""
    decoupled = dict(HYPER, decoupled_weight_decay=True)
    grads = grad_stream(SHAPES, 6)
    alone = make_params(SHAPES)
    run_steps(FusedSGDW(alone, backend="reference", **decoupled), alone, grads)

    params = make_params(SHAPES)
    fused = FusedSGDW(params, backend="reference", **decoupled)
    run_steps(fused, params, grads[:3])
    saved = _through_file(fused.state_dict())

    sgd = torch.optim.SGD(make_params(SHAPES), **HYPER)
    sgd.load_state_dict(copy.deepcopy(saved))
    with pytest.raises(KeyError, match="weight_decay"):
        run_steps(sgd, sgd.param_groups[0]["params"], grads[3:4])

    restored = FusedSGDW(params, backend="reference", **HYPER)  # coupled: the state says decoupled
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["decoupled_weight_decay"] is True
    run_steps(restored, params, grads[3:])
    assert_params_close(params, alone, rtol=0, atol=0)


def test_loads_the_earlier_format():
    """Run checkpoints written before this format (a bool flag next to weight_decay, backend saved)."""
    params = make_params(SHAPES)
    fused = FusedSGDW(params, backend="reference", decoupled_weight_decay=True, **HYPER)
    run_steps(fused, params, grad_stream(SHAPES, 2))
    earlier = fused.state_dict()
    group = earlier["param_groups"][0]
    group["weight_decay"] = group.pop("decoupled_weight_decay")
    group.update(decoupled_weight_decay=True, backend="triton")
    restored = FusedSGDW(params, backend="reference", lr=0.5)
    restored.load_state_dict(earlier)
    loaded = restored.param_groups[0]
    assert (loaded["decoupled_weight_decay"], loaded["weight_decay"], loaded["backend"]) == (True, 5e-4, "reference")


def test_load_rejects_a_state_with_both_decays():
    params = make_params(SHAPES)
    state = FusedSGDW(params, decoupled_weight_decay=True, **HYPER).state_dict()
    state["param_groups"][0]["weight_decay"] = 1e-4
    with pytest.raises(ValueError, match="both weight_decay and a decoupled_weight_decay"):
        FusedSGDW(params, **HYPER).load_state_dict(state)
