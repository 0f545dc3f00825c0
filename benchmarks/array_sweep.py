"""Aggregate training images/s of the fused ResNet-18 array (FusedResNet18) as the number of members K grows,
against K=1 in the same run: how much one GPU gains by training K runs as one network.

    python benchmarks/array_sweep.py --out sweep.json [--members 1,4,8,16,25] [--steps 20] [--time-limit 240]

Each K: FusedResNet18(K, width) in channels_last, bf16 autocast, torch.compile (default mode), one shared
batch of --batch images feeding every member (as an array of runs sees it), the sum of the member losses,
backward, and one FusedSGDW step over all parameters. Warm-up steps (the compile among them) are not timed;
then --steps steps between two device synchronisations give K * batch * steps / seconds.

A K that runs out of device memory is recorded as such, and the larger K are skipped. --time-limit bounds the
whole sweep: a K whose timed steps cross it stops early and records the steps it did; the K not yet started
are recorded as skipped. The JSON (device, versions, date, settings, one row per K) is rewritten atomically
after every K, so a killed sweep leaves what it measured.

On a CPU, tiny settings check the script itself:
    python benchmarks/array_sweep.py --out sweep.json --width 0.0625 --batch 32 --members 1,2 --steps 2 --no-compile
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fasttrick import FusedSGDW
from fasttrick.environment import environment_report
from fasttrick.models import FusedResNet18, member_cross_entropy
from fasttrick.runfiles import write_json

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}


def parse_members(text: str) -> list[int]:
    try:
        members = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--members takes comma-separated positive ints, got {text!r}") from None
    if not members or members[0] < 1:
        raise argparse.ArgumentTypeError(f"--members takes comma-separated positive ints, got {text!r}")
    return members


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument(
        "--members", type=parse_members, default=[1, 4, 8, 16, 25], help="K values (default 1,4,8,16,25)"
    )
    parser.add_argument("--steps", type=positive(int), default=20, help="timed steps per K (default 20)")
    parser.add_argument(
        "--warmup", type=positive(int), default=3, help="untimed steps per K, compile included (default 3)"
    )
    parser.add_argument("--time-limit", type=positive(float), default=None, help="seconds for the whole sweep")
    parser.add_argument("--width", type=positive(float), default=1.0, help="ResNet-18 width (default 1.0)")
    parser.add_argument("--batch", type=positive(int), default=512, help="images per step, shared by the members")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="bf16", help="autocast dtype (default bf16)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager instead of torch.compile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(members: int, args: argparse.Namespace, device: torch.device, deadline: float | None) -> dict[str, Any]:
    """One K: warm-up (compile), then up to args.steps timed steps (fewer if the deadline passes)."""
    amp_dtype = PRECISIONS[args.precision]
    torch.manual_seed(0)
    model = FusedResNet18(members=members, width=args.width).to(device, memory_format=torch.channels_last)
    optimizer = FusedSGDW(model.parameters(), **HYPER)
    forward = torch.compile(model) if args.compile else model
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch,), generator=gen).to(device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward(images)
        losses = member_cross_entropy(logits.float(), labels)
        losses.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return losses.detach()

    row: dict[str, Any] = {"members": members, "parameters": sum(p.numel() for p in model.parameters())}
    start = time.perf_counter()
    first_losses = step()
    for _ in range(args.warmup - 1):
        step()
    synchronize(device)
    row["warmup_seconds"] = round(time.perf_counter() - start, 2)

    done = 0
    start = time.perf_counter()
    while done < args.steps:
        losses = step()
        done += 1
        if deadline is not None and time.perf_counter() > deadline:
            break
    synchronize(device)
    seconds = time.perf_counter() - start
    row.update(
        status="ok" if done == args.steps else "time_limit",
        timed_steps=done,
        seconds=round(seconds, 4),
        step_ms=round(seconds / done * 1e3, 3),
        images_per_s=round(members * args.batch * done / seconds, 1),
        first_mean_loss=round(first_losses.mean().item(), 4),
        last_mean_loss=round(losses.mean().item(), 4),
    )
    if not all(math.isfinite(x) for x in losses.tolist()):
        row["status"] = "non_finite_loss"
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def release(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu")
    started = time.perf_counter()
    deadline = started + args.time_limit if args.time_limit else None
    report: dict[str, Any] = {
        "benchmark": "fused ResNet-18 array: aggregate training images/s by number of members",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "environment": environment_report(),
        "settings": {
            "members": args.members,
            "width": args.width,
            "batch_shared_by_members": args.batch,
            "precision": args.precision,
            "channels_last": True,
            "compile": args.compile,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "time_limit_s": args.time_limit,
            "optimizer": {"name": "FusedSGDW", **HYPER},
            "cpu_threads": torch.get_num_threads(),
        },
        "results": [],
    }
    results = report["results"]
    stop_reason = None
    for members in args.members:
        if stop_reason is None and deadline is not None and time.perf_counter() > deadline:
            stop_reason = "skipped: the sweep's time limit had passed"
        if stop_reason is not None:
            results.append({"members": members, "status": stop_reason})
        else:
            try:
                row = measure(members, args, device, deadline)
            except Exception as error:  # recorded in the JSON: one K's failure must not lose the others' rows
                message = (str(error).strip().splitlines() or [type(error).__name__])[0]
                # An OOM inside torch.compile's autotuning arrives wrapped in the compiler's exception.
                if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
                    row = {"members": members, "status": "out_of_memory", "error": message}
                    stop_reason = f"skipped: K={members} ran out of memory"
                else:
                    row = {"members": members, "status": "error", "error": f"{type(error).__name__}: {message}"}
            results.append(row)
            release(device)
            baseline = next((r for r in results if r["members"] == 1 and "images_per_s" in r), None)
            if baseline is not None and "images_per_s" in row:
                row["speedup_vs_k1"] = round(row["images_per_s"] / baseline["images_per_s"], 3)
        report["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        write_json(args.out, report)
        print(f"K={members:>3}: {results[-1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
