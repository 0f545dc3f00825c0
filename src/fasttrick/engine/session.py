"""What the runs of one process share (:class:`Session`: data sets, models compiled once) and how a run
executes here (:class:`Runtime`: device, autocast dtype, compile).

A run re-initialises its session's model in place from its seed, so ``torch.compile``'s graphs (train
and eval) are reused and nothing recompiles between runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import DataConfig, RunConfig

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a run executes on this machine, resolved from its config's "auto"s."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32, no autocast
    compile: bool

    @property
    def precision(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.amp_dtype]


def resolve_runtime(run: RunConfig) -> Runtime:
    train = run.train
    if train.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={train.device!r} but CUDA is not available here; use --device cpu")
    precision = train.precision if train.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    compile_ = train.compile if train.compile != "auto" else device.type == "cuda"
    return Runtime(device, _AMP_DTYPES[precision], bool(compile_))


@dataclasses.dataclass
class PreparedModel:
    module: nn.Module  # the model itself: state_dict, re-initialisation
    forward: Callable[[torch.Tensor], torch.Tensor]  # the compiled callable (or the module when eager)
    compile_seconds: float = 0.0


def reinitialize(module: nn.Module, seed: int) -> None:
    """Fresh weights from ``seed``, in place: same tensors, same memory format, so compiled graphs stay valid."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.reset_parameters()  # BatchNorm: running stats too
    for p in module.parameters():
        p.grad = None


class Session:
    """What the runs of one process share: data sets by source, and models compiled once.

    ``log`` receives every line of output; ``bar`` forces the progress bar on or off (default: on
    when stderr is a terminal); ``dataset`` (a fasttrick.data.Cifar10) replaces CIFAR-10 from
    ``data.root`` for every run (tests, notebooks), subsets still applied.
    """

    def __init__(self, log: Callable[[str], None] | None = None, bar: bool | None = None, dataset=None):
        self.log = log or (lambda line: print(line, flush=True))
        self.bar = bar
        self._dataset = dataset
        self._data: dict[Any, Any] = {}
        self._models: dict[Any, PreparedModel] = {}
        self._environment: dict[str, Any] | None = None
        # Set by the grid runner: units (runs or arrays) still to train after the current one here, and their
        # measured mean seconds (None until one has ended); progress lines then add the grid's ETA.
        self.units_after: tuple[int, float | None] = (0, None)

    # -- data ---------------------------------------------------------------------------------

    def dataset(self, cfg: DataConfig):
        key = (cfg.root, cfg.train_subset, cfg.test_subset)
        if key not in self._data:
            from ..data import load_cifar10

            full_key = (cfg.root, None, None)
            if full_key not in self._data:
                self._data[full_key] = self._dataset if self._dataset is not None else load_cifar10(cfg.root)
            self._data[key] = subset(self._data[full_key], cfg.train_subset, cfg.test_subset)
        return self._data[key]

    # -- model --------------------------------------------------------------------------------

    def model(self, run: RunConfig, rt: Runtime, members: int | None = None) -> PreparedModel:
        """The run's ResNet-18, or with ``members`` an array of that many (fasttrick.models.FusedResNet18),
        compiled once per process and shape and reused by every later run or array of that shape."""
        m, t = run.model, run.train
        key = (
            members,
            m.name,
            m.width,
            m.channels_last,
            str(rt.device),
            rt.amp_dtype,
            rt.compile,
            t.compile_mode,
            t.compile_backend,
        )
        prepared = self._models.get(key)
        if prepared is None:
            from ..models import FusedResNet18, resnet18

            module: nn.Module = resnet18(width=m.width) if members is None else FusedResNet18(members, width=m.width)
            module = module.to(rt.device)
            if m.channels_last:
                module = module.to(memory_format=torch.channels_last)
            prepared = PreparedModel(module, module)
            if rt.compile:
                mode = None if t.compile_mode == "default" else t.compile_mode
                prepared.forward = torch.compile(module, mode=mode, backend=t.compile_backend)
                prepared.compile_seconds = self._warm_up(prepared, run, rt)
                what = "the model" if members is None else f"an array of {members} models"
                self.log(f"compiled {what} ({t.compile_backend}, {t.compile_mode}) in {prepared.compile_seconds:.1f} s")
            self._models[key] = prepared
        return prepared

    def _warm_up(self, prepared: PreparedModel, run: RunConfig, rt: Runtime) -> float:
        """Compile the train (fwd+bwd) and eval graphs now, on random data, so no run's epoch pays for it."""
        start = time.perf_counter()
        batch = run.data.batch_size
        x = torch.randn(batch, 3, 32, 32, device=rt.device, dtype=rt.amp_dtype or torch.float32)
        x = x.contiguous(memory_format=torch.channels_last) if run.model.channels_last else x
        with autocast(rt):
            prepared.module.train()
            # any scalar of the logits ([N, classes], or [N, members, classes] for an array) compiles the
            # backward graph: the loss itself is computed outside the compiled module
            prepared.forward(x).float().logsumexp(-1).mean().backward()
            prepared.module.eval()
            with torch.no_grad():
                prepared.forward(x)
        sync(rt.device)
        return time.perf_counter() - start

    # -- facts for run folders ----------------------------------------------------------------

    def environment(self, rt: Runtime) -> dict[str, Any]:
        if self._environment is None:
            from ..environment import environment_report

            self._environment = {**environment_report(), **git_facts()}
        import torch

        return {
            **self._environment,
            "cpu_threads": torch.get_num_threads(),  # now: the executor sets it per run, after the report is cached
            "device": str(rt.device),
            "precision": rt.precision,
            "compile": rt.compile,
        }


def subset(data, train: int | None, test: int | None):
    """The first ``train`` / ``test`` images of a fixed shuffle (seed 0): the same subset for every run."""
    if train is None and test is None:
        return data
    rng = np.random.default_rng(0)
    order_train = rng.permutation(len(data.train_images))[: train or len(data.train_images)]
    order_test = rng.permutation(len(data.test_images))[: test or len(data.test_images)]
    return dataclasses.replace(
        data,
        train_images=np.ascontiguousarray(data.train_images[np.sort(order_train)]),
        train_labels=np.ascontiguousarray(data.train_labels[np.sort(order_train)]),
        test_images=np.ascontiguousarray(data.test_images[np.sort(order_test)]),
        test_labels=np.ascontiguousarray(data.test_labels[np.sort(order_test)]),
    )


def git_facts() -> dict[str, Any]:
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def autocast(rt: Runtime):
    return torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# glibc's mallopt parameter: the most blocks served by mmap (0: none).
_M_MMAP_MAX = -4


def keep_large_blocks_on_the_heap() -> None:
    """Serve every allocation of this process from the heap, not from mmap (glibc, Linux).

    glibc maps each block over its mmap threshold (32 MB at most) afresh and unmaps it when freed, so every
    step page-faults on it again. An array's activations cross that size where one run's do not (stage 1 of
    four 1/8-width members at batch 256: 33.5 MB): ~250k page faults a step, which cost an array of 4 about
    a third of its speed on a 2-core CPU (0.51x -> 0.80x one run's aggregate images/s, one thread). A no-op
    where glibc is not the allocator.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
    except (OSError, AttributeError):  # musl and others: no mallopt, and no such threshold to avoid
        pass
