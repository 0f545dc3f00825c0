"""The 2-process cases of test_distributed.py: FusedSGDW against torch.optim.SGD under DDP, ZeRO, FSDP2,
tensor parallelism and torch.distributed.checkpoint, on the CPU with gloo.

`python dist_cases.py RANK WORLD_SIZE STORE_FILE OUT_DIR` runs every case in this process, one
after the other, and writes `OUT_DIR/rank{RANK}.json` ({case: traceback or null}) after each, so a
rank that dies still leaves what it did. One process pair for all cases: on a loaded 2-core machine
a pair that runs a single case takes 34 s (imports, gloo set-up), one that runs all 44 70-85 s.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.nn.parallel import DistributedDataParallel as DDP

from fasttrick import FusedSGDW, available_backends

from sgdw_helpers import FP32_TOL  # tests/ is on the path: the script's own directory

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
BACKENDS = available_backends("cpu")
STEPS = 3
FULL = StateDictOptions(full_state_dict=True)
_out_dir: str  # OUT_DIR, set by main(): the cases' checkpoints go there too


class MLP(nn.Module):
    """fc2 has 3 rows: over 2 ranks FSDP2 shards it unevenly (2 + 1) and pads."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _batch(step: int, rank: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(4, *shape, generator=gen), torch.randn(4, 3, generator=gen)


def train(model: nn.Module, opt, steps: int, *, first: int = 0, same_data: bool = False, channels_last=False):
    """`steps` steps of MSE regression; each rank its own batch unless `same_data` (tensor parallel)."""
    rank = dist.get_rank()
    shape = (3, 6, 6) if channels_last else (6,)
    for step in range(first, first + steps):
        x, y = _batch(step, 0 if same_data else rank, shape)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def fresh(cls=MLP, channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = cls()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def fsdp2(model: nn.Module) -> nn.Module:
    fully_shard(model.fc1)
    fully_shard(model)
    return model


def tensor_parallel(model: nn.Module) -> nn.Module:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return parallelize_module(model, mesh, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})


def full(model: nn.Module) -> list[torch.Tensor]:
    return [(p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for p in model.parameters()]


def assert_same(actual: nn.Module, expected: nn.Module) -> None:
    for (name, a), e in zip(actual.named_parameters(), full(expected), strict=True):
        a = a.full_tensor() if isinstance(a, DTensor) else a
        torch.testing.assert_close(a.detach(), e, **FP32_TOL, msg=lambda m, name=name: f"{name}: {m}")


# --- training against torch.optim.SGD on the same layout -------------------------------------------------


def case_fsdp2(backend: str, nesterov: bool) -> None:
    fused, ref = fsdp2(fresh()), fsdp2(fresh())
    train(fused, FusedSGDW(fused.parameters(), backend=backend, nesterov=nesterov, **HYPER), STEPS)
    train(ref, torch.optim.SGD(ref.parameters(), nesterov=nesterov, **HYPER), STEPS)
    assert_same(fused, ref)


def case_tensor_parallel(backend: str) -> None:
    fused, ref = tensor_parallel(fresh()), tensor_parallel(fresh())
    assert isinstance(fused.fc1.weight, DTensor)
    train(fused, FusedSGDW(fused.parameters(), backend=backend, **HYPER), STEPS, same_data=True)
    train(ref, torch.optim.SGD(ref.parameters(), **HYPER), STEPS, same_data=True)
    assert_same(fused, ref)


def case_ddp(backend: str, bucket_view: bool, channels_last: bool) -> None:
    cls = ConvNet if channels_last else MLP
    fused = DDP(fresh(cls, channels_last), gradient_as_bucket_view=bucket_view)
    ref = DDP(fresh(cls, channels_last), gradient_as_bucket_view=bucket_view)
    train(fused, FusedSGDW(fused.parameters(), backend=backend, **HYPER), STEPS, channels_last=channels_last)
    train(ref, torch.optim.SGD(ref.parameters(), **HYPER), STEPS, channels_last=channels_last)
    assert_same(fused, ref)


def case_zero(backend: str) -> None:
    """ZeRO over FusedSGDW trains like ZeRO over torch.optim.SGD, and its consolidated checkpoint
    continues the run in ZeRO over torch.optim.SGD."""
    ref = DDP(fresh())
    train(ref, ZeroRedundancyOptimizer(ref.parameters(), optimizer_class=torch.optim.SGD, **HYPER), 4)

    model = DDP(fresh())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=FusedSGDW, backend=backend, **HYPER)
    train(model, opt, 2)
    opt.consolidate_state_dict(to=0)
    state = [opt.state_dict() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(state, src=0)  # ZeRO loads the whole state on every rank
    sgd = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.SGD, **dict(HYPER, lr=0.5))
    sgd.load_state_dict(state[0])
    train(model, sgd, 2, first=2)
    assert_same(model, ref)


# --- checkpoints: DCP between shardings and optimizers, torch.save of sharded state -----------------------


def _dcp_state(model: nn.Module, opt) -> dict:
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}


def _dcp_save(model: nn.Module, opt, path: str) -> None:
    dcp.save(_dcp_state(model, opt), checkpoint_id=path)


def _dcp_load(model: nn.Module, opt, path: str) -> None:
    state = _dcp_state(model, opt)
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])


def _shared_dir() -> str:
    """A directory both ranks write one checkpoint into (rank 0 makes it)."""
    path = [tempfile.mkdtemp(dir=_out_dir) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path, src=0)
    return path[0]


def _through_dcp(model: nn.Module, opt) -> Callable[[nn.Module, torch.optim.Optimizer], None]:
    """Saves with dcp.save; returns the function that loads it into another model and optimizer."""
    path = _shared_dir()
    _dcp_save(model, opt, path)
    return lambda model, opt: _dcp_load(model, opt, path)


def _through_full_state_dict(model: nn.Module, opt) -> Callable[[nn.Module, torch.optim.Optimizer], None]:
    """The unsharded state (full_state_dict=True) on every rank, in memory; returns its loader."""
    model_state = get_model_state_dict(model, options=FULL)
    optim_state = get_optimizer_state_dict(model, opt, options=FULL)

    def load(model: nn.Module, opt) -> None:
        set_model_state_dict(model, model_state, options=FULL)
        set_optimizer_state_dict(model, opt, optim_state, options=FULL)

    return load


def _relay(hops, carry=_through_dcp, same_data: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Two training steps per hop; each hop, a (layout, optimizer) pair, starts from a fresh model and
    loads the previous hop's state through `carry`. Returns the last hop's model and optimizer."""
    load = None
    for hop, (layout, make_optimizer) in enumerate(hops):
        model = layout(fresh())
        opt = make_optimizer(model.parameters())
        if load is not None:
            load(model, opt)
        train(model, opt, 2, first=2 * hop, same_data=same_data)
        if hop < len(hops) - 1:
            load = carry(model, opt)
    return model, opt


def _loading(cls, **options):
    """An optimizer built to receive a checkpoint: DCP loads only the state it has, so it needs
    momentum (for buffers); its lr differs from the run's, which must come from the checkpoint."""
    return partial(cls, **dict(HYPER, lr=0.5), **options)


def case_dcp_fsdp2_to_torch_sgd_and_back(backend: str) -> None:
    """FusedSGDW on FSDP2 -> DCP -> torch.optim.SGD on DDP (another sharding) -> DCP -> FusedSGDW on
    FSDP2 again: the same run as torch.optim.SGD all along (buffers and lr carried over)."""
    ref = DDP(fresh())
    train(ref, torch.optim.SGD(ref.parameters(), **HYPER), 6)
    fused = partial(FusedSGDW, backend=backend, **HYPER)
    model, opt = _relay(
        [(fsdp2, fused), (DDP, _loading(torch.optim.SGD)), (fsdp2, _loading(FusedSGDW, backend=backend))]
    )
    assert opt.param_groups[0]["backend"] == backend
    assert_same(model, ref)


def case_full_state_dict_fsdp2_to_torch_sgd_and_back(backend: str) -> None:
    """As the DCP relay, through get/set_optimizer_state_dict(full_state_dict=True) in memory."""
    ref = DDP(fresh())
    train(ref, torch.optim.SGD(ref.parameters(), **HYPER), 6)
    fused = partial(FusedSGDW, backend=backend, **HYPER)
    hops = [(fsdp2, fused), (DDP, _loading(torch.optim.SGD)), (fsdp2, _loading(FusedSGDW, backend=backend))]
    model, _ = _relay(hops, carry=_through_full_state_dict)
    assert_same(model, ref)


def case_dcp_tensor_parallel_to_fsdp2(backend: str) -> None:
    """FusedSGDW on column/row-wise tensor parallel -> DCP -> torch.optim.SGD on FSDP2 (rows over ranks)
    -> DCP -> FusedSGDW on tensor parallel, every rank on the same batches: torch.optim.SGD's run."""
    ref = fsdp2(fresh())
    train(ref, torch.optim.SGD(ref.parameters(), **HYPER), 6, same_data=True)
    fused = partial(FusedSGDW, backend=backend, **HYPER)
    hops = [
        (tensor_parallel, fused),
        (fsdp2, _loading(torch.optim.SGD)),
        (tensor_parallel, _loading(FusedSGDW, backend=backend)),
    ]
    model, _ = _relay(hops, same_data=True)
    assert_same(model, ref)


def case_dcp_decoupled(backend: str) -> None:
    """A decoupled FusedSGDW checkpoint loads into a decoupled FusedSGDW and continues the run; a
    torch.optim.SGD refuses it (through DCP and through full_state_dict) instead of running the decay
    as L2."""
    decoupled = dict(HYPER, decoupled_weight_decay=True, backend=backend)
    ref = fsdp2(fresh())
    train(ref, FusedSGDW(ref.parameters(), **decoupled), 4)

    path = _shared_dir()
    model = fsdp2(fresh())
    opt = FusedSGDW(model.parameters(), **decoupled)
    train(model, opt, 2)
    _dcp_save(model, opt, path)

    sgd_model = fsdp2(fresh())
    sgd = torch.optim.SGD(sgd_model.parameters(), **HYPER)
    try:
        _dcp_load(sgd_model, sgd, path)
    except CheckpointException as e:  # every rank's planner error in one (a BaseException)
        assert "Missing key in checkpoint state_dict: optim.param_groups.0.weight_decay" in str(e), e
    else:
        raise AssertionError("torch.optim.SGD loaded a decoupled FusedSGDW checkpoint")
    try:
        set_optimizer_state_dict(sgd_model, sgd, get_optimizer_state_dict(model, opt, options=FULL), options=FULL)
    except KeyError as e:  # torch meets the key its own state_dict lacks
        assert "decoupled_weight_decay" in str(e), e
    else:
        raise AssertionError("torch.optim.SGD took a decoupled FusedSGDW full_state_dict")

    model = fsdp2(fresh())
    opt = FusedSGDW(model.parameters(), **decoupled)
    _dcp_load(model, opt, path)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    assert opt.param_groups[0]["weight_decay"] == HYPER["weight_decay"]
    train(model, opt, 2, first=2)
    assert_same(model, ref)


def case_torch_save_fsdp2_both_ways(backend: str) -> None:
    """Each rank's own FSDP2 optimizer state (DTensor buffers) through torch.save and
    torch.load(weights_only=True): FusedSGDW -> torch.optim.SGD -> FusedSGDW, the same run as SGD."""
    ref = fsdp2(fresh())
    train(ref, torch.optim.SGD(ref.parameters(), **HYPER), 6)

    path = os.path.join(_shared_dir(), f"rank{dist.get_rank()}.pt")
    model = fsdp2(fresh())
    opt = FusedSGDW(model.parameters(), backend=backend, **HYPER)
    train(model, opt, 2)
    torch.save(opt.state_dict(), path)
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    sgd.load_state_dict(torch.load(path, weights_only=True))
    assert isinstance(sgd.state[model.fc1.weight]["momentum_buffer"], DTensor)
    train(model, sgd, 2, first=2)
    torch.save(sgd.state_dict(), path)
    opt = FusedSGDW(model.parameters(), backend=backend, lr=0.5)
    opt.load_state_dict(torch.load(path, weights_only=True))
    train(model, opt, 2, first=4)
    assert_same(model, ref)


def _cases() -> dict[str, Callable[[], None]]:
    """Every case on every backend this machine has (the Triton kernel under its interpreter here)."""
    per_backend = {
        "fsdp2": partial(case_fsdp2, nesterov=False),
        "fsdp2-nesterov": partial(case_fsdp2, nesterov=True),
        "tensor_parallel": case_tensor_parallel,
        "ddp": partial(case_ddp, bucket_view=False, channels_last=False),
        "ddp-bucket_view-channels_last": partial(case_ddp, bucket_view=True, channels_last=True),
        "zero": case_zero,
        "dcp-fsdp2-to-torch_sgd-and-back": case_dcp_fsdp2_to_torch_sgd_and_back,
        "dcp-tensor_parallel-to-fsdp2": case_dcp_tensor_parallel_to_fsdp2,
        "full_state_dict-fsdp2-to-torch_sgd-and-back": case_full_state_dict_fsdp2_to_torch_sgd_and_back,
        "dcp-decoupled": case_dcp_decoupled,
        "torch_save-fsdp2-both-ways": case_torch_save_fsdp2_both_ways,
    }
    return {f"{name}-{b}": partial(case, b) for name, case in per_backend.items() for b in BACKENDS}


CASES = _cases()


def main(rank: int, world_size: int, store_file: str, out_dir: str) -> None:
    global _out_dir
    _out_dir = out_dir
    # gloo's timeout bounds every collective: a peer that died or took another path fails this
    # rank within it instead of hanging (test_distributed.py bounds the whole run as well).
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=int(os.environ.get("DIST_CASES_TIMEOUT_S", "60"))),
    )
    out = Path(out_dir) / f"rank{rank}.json"
    results: dict[str, str | None] = {}
    selected = os.environ.get("DIST_CASES")  # comma-separated names, to rerun a few by hand
    for name, case in CASES.items():
        if selected and name not in selected.split(","):
            continue
        try:
            case()
            results[name] = None
        except (Exception, CheckpointException):  # DCP's errors derive from BaseException only
            results[name] = traceback.format_exc()
        out.write_text(json.dumps(results))
        # Both ranks finish a case before either starts the next. A case that failed on one rank only
        # leaves the other waiting in a collective: this barrier then fails both ranks within gloo's
        # timeout, rather than pairing that collective with the next case's.
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
