"""Will k runs fit one GPU? Measured before packing them, not guessed.

Neither Ray's fractional GPUs (``num_gpus=0.5``) nor N local workers on one GPU limit what a run
allocates: two runs that do not fit simply crash with CUDA out-of-memory, minutes into the grid. So
before packing, one run of each distinct memory footprint trains a few steps in a fresh process on
the GPU, its peak is measured, and ``runs per GPU x peak`` is compared with the GPU's memory.

The probe functions run on a GPU (:func:`probe_run_memory`); :func:`check_fit` is plain arithmetic,
so tests drive it with simulated probes on a CPU-only machine.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from ..data import IMAGE_SHAPE, NUM_TEST, NUM_TRAIN
from .expand import GridRun

# Packed runs share the GPU with each other's allocator fragmentation and with compile's autotuning
# scratch, neither of which one probe sees: keep 10% of the memory free.
USABLE_SHARE = 0.9
# Steps to reach a run's steady peak: the first allocates the optimizer state, the second reuses the
# freed activations; a third confirms nothing grows.
PROBE_STEPS = 3
IMAGE_BYTES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]


class DoesNotFit(RuntimeError):
    """Packing runs onto a GPU would exceed its memory; the message gives the figures and the way out."""


@dataclasses.dataclass(frozen=True)
class MemoryProbe:
    run: str  # the run measured (one per distinct footprint)
    peak_bytes: int  # the run's process at its peak: the allocator's reserve, the CUDA context, the data set
    total_bytes: int  # the GPU's memory
    device_name: str


def footprint(run: GridRun) -> tuple:
    """What sets a run's GPU memory: model size, batch, precision, optimizer state, data resident on the GPU."""
    c = run.config
    return (
        c.model.width,
        c.model.channels_last,
        c.data.batch_size,
        c.data.train_subset,
        c.data.test_subset,
        c.train.precision,
        c.optimizer.name,
    )


def representatives(runs: Sequence[GridRun]) -> list[GridRun]:
    """One run per distinct footprint: a grid of 30 runs over lr and schedules needs one probe, not 30."""
    seen: dict[tuple, GridRun] = {}
    for run in runs:
        seen.setdefault(footprint(run), run)
    return list(seen.values())


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fit(probes: Sequence[MemoryProbe], runs_per_gpu: int) -> None:
    """Raise :class:`DoesNotFit` when ``runs_per_gpu`` copies of the largest probed run exceed the GPU."""
    if not probes or runs_per_gpu < 2:
        return
    largest = max(probes, key=lambda p: p.peak_bytes)
    needed = runs_per_gpu * largest.peak_bytes
    usable = USABLE_SHARE * largest.total_bytes
    if needed > usable:
        fits = int(usable // largest.peak_bytes)
        way_out = (
            f"pack at most {fits} per GPU (--gpus-per-run {1 / fits:.2g} with Ray, or fewer --workers per GPU)"
            if fits >= 1
            else "one run alone does not fit: lower data.batch_size or model.width"
        )
        raise DoesNotFit(
            f"{runs_per_gpu} runs per GPU do not fit: run {largest.run!r} peaks at {gib(largest.peak_bytes)} "
            f"(measured), {runs_per_gpu} x {gib(largest.peak_bytes)} = {gib(needed)} > {gib(usable)} "
            f"({USABLE_SHARE:.0%} of the {gib(largest.total_bytes)} of {largest.device_name}); {way_out}."
        )


# A lower bound of what one run needs, known before anything runs: enough to refuse a width or batch that
# cannot fit (model.width 64 is 46 G parameters) at once, instead of minutes in or with the machine swapping.
# ResNet-18's parameters grow with the square of the width (11.17 M at 1.0); the outputs of its 17 convs,
# which backward keeps, are 557 056 values per image at width 1.0 (BN inputs and ReLU outputs come on top,
# so real runs need ~3x this).
PARAMETERS_AT_WIDTH_1 = 11_000_000
CONV_OUTPUTS_PER_IMAGE = 557_056
_STATE_BUFFERS = {"fused_sgdw": 1, "sgd": 1, "adam": 2, "adamw": 2, "nadam": 2}


def least_bytes(run: GridRun, device_type: str) -> int:
    """Bytes ``run`` needs at the least on a device of ``device_type``: fp32 weights, gradients and optimizer
    state, the conv outputs of one batch (bf16 on a GPU unless fp32 is asked for), and the data set."""
    c = run.config
    parameters = int(PARAMETERS_AT_WIDTH_1 * c.model.width**2)
    buffers = _STATE_BUFFERS[c.optimizer.name] if getattr(c.optimizer, "momentum", 1) else 0
    low_precision = c.train.precision in ("bf16", "fp16") or (c.train.precision == "auto" and device_type == "cuda")
    activations = CONV_OUTPUTS_PER_IMAGE * c.model.width * c.data.batch_size * (2 if low_precision else 4)
    images = (c.data.train_subset or NUM_TRAIN) + (c.data.test_subset or NUM_TEST)
    return int(parameters * 4 * (2 + buffers) + activations + images * IMAGE_BYTES)


def check_sizes(
    runs: Sequence[GridRun], memory_of: Callable[[str], tuple[int, str, str]], *, cpu_workers: int = 1
) -> None:
    """Raise :class:`DoesNotFit` for a run whose :func:`least_bytes` exceed its device's memory: on the CPU,
    ``cpu_workers`` runs at once share the machine's memory (GPU packing is measured: :func:`check_fit`).
    ``memory_of(train.device)`` gives (bytes, device type, description) of the device the run trains on."""
    devices = {device: memory_of(device) for device in sorted({run.config.train.device for run in runs})}
    for run in runs:
        total, device_type, device = devices[run.config.train.device]
        at_once = min(cpu_workers, len(runs)) if device_type == "cpu" else 1
        needed = least_bytes(run, device_type)
        if needed * at_once > total:
            c = run.config
            workers = f"; with --workers {cpu_workers}, {at_once} such runs at once" if at_once > 1 else ""
            raise DoesNotFit(
                f"run {run.name!r} needs at least {gib(needed)} (model.width {c.model.width:g}: "
                f"{PARAMETERS_AT_WIDTH_1 * c.model.width**2 / 1e6:,.0f} M parameters; data.batch_size "
                f"{c.data.batch_size}){workers}, more than the {gib(total)} of {device}; lower model.width "
                f"(memory grows with its square) or data.batch_size{', or --workers' if at_once > 1 else ''}."
            )


def device_memory(device: str) -> tuple[int, str, str]:
    """(total bytes, device type, description) of the device a run with ``train.device`` trains on here:
    the GPU's memory, or the machine's RAM for the CPU. Reads the GPU's properties without allocating."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        index = int(device.partition(":")[2] or 0)  # auto and cuda: the first GPU
        properties = torch.cuda.get_device_properties(index)
        return int(properties.total_memory), "cuda", f"GPU {index} ({properties.name})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "cpu", "this machine's memory"


def members_fitting(one: MemoryProbe, two: MemoryProbe) -> int:
    """The most members of an array one GPU holds, from the measured peaks of arrays of one and two:
    each member adds ``two - one`` (its weights, optimizer state and activations), the rest is shared
    (the CUDA context, the data set, the input batch)."""
    per_member = max(two.peak_bytes - one.peak_bytes, 1)
    shared = max(one.peak_bytes - per_member, 0)
    return max(1, int((USABLE_SHARE * one.total_bytes - shared) // per_member))


def probe_run_memory(run: GridRun, members: int | None = None) -> MemoryProbe:
    """Train ``run``'s model (or, with ``members``, an array of that many: fasttrick.models.FusedResNet18)
    for a few steps on random data on the current CUDA device; its peak memory.

    Call it in a fresh process (a spawned worker, a Ray task): it creates a CUDA context, which is
    only freed when the process exits. Eager mode: inductor's fused graphs usually hold fewer
    activations, while compile_mode=reduce-overhead's CUDA-graph pools may hold more (the headroom
    in USABLE_SHARE is for that).
    """
    import torch

    from ..engine import build_optimizer, resolve_runtime
    from ..models import FusedResNet18, resnet18

    config = run.config
    runtime = resolve_runtime(config)
    if runtime.device.type != "cuda":
        raise RuntimeError(f"run {run.name!r} resolves to device {runtime.device}; the memory probe needs a GPU")
    device = runtime.device
    torch.cuda.set_device(device)
    torch.cuda.reset_peak_memory_stats(device)
    width = config.model.width
    model = (resnet18(width=width) if members is None else FusedResNet18(members, width=width)).to(device)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config.optimizer, model.parameters(), device)
    batch = config.data.batch_size
    images = torch.randn(batch, 3, 32, 32, device=device, dtype=runtime.amp_dtype or torch.float32)
    if config.model.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    for _ in range(PROBE_STEPS):
        with torch.autocast("cuda", dtype=runtime.amp_dtype, enabled=runtime.amp_dtype is not None):
            # a scalar of the logits ([N, classes], or [N, members, classes]): the same graphs as the loss
            loss = model(images).float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    # The context, cuDNN/cuBLAS code and handles live outside the caching allocator: device memory in
    # use minus the allocator's reserve (an upper figure if other processes share the GPU).
    outside_allocator = max(0, (total - free) - torch.cuda.memory_reserved(device))
    # The torch loader keeps the whole (sub)set on the GPU as uint8 (184 MB for all of CIFAR-10).
    images_on_device = (config.data.train_subset or NUM_TRAIN) + (config.data.test_subset or NUM_TEST)
    peak = torch.cuda.max_memory_reserved(device) + outside_allocator + images_on_device * IMAGE_BYTES
    return MemoryProbe(run.name, int(peak), int(total), torch.cuda.get_device_name(device))
