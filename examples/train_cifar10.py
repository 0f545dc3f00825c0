"""ResNet-18 on CIFAR-10 from fasttrick's parts, in one file to read top to bottom (no config system, no runner).

    python examples/train_cifar10.py                          # a GPU: 30 epochs, bf16, compiled
    python examples/train_cifar10.py --device cpu --epochs 1 --width 0.125 --train-subset 1024 --test-subset 512

The parts: the CIFAR-10 split held on the device as uint8 and augmented there in whole batches
(fasttrick.data, backend "torch"), ResNet-18 in channels-last memory under bf16 autocast and torch.compile,
FusedSGDW (SGD with momentum and L2 in one pass over memory) with a per-step warm-up + cosine schedule, and
the test-split accuracy after every epoch. CIFAR-10 comes from $FASTTRICK_DATA (an archive or folder), else
torchvision downloads it; it is decoded once into a uint8 cache. `python -m fasttrick.train` runs the same
parts for a grid of configs, with checkpoints, resume and reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from fasttrick import FusedSGDW, available_backends
from fasttrick.data import Cifar10, build_loader, load_cifar10
from fasttrick.models.resnet import resnet18


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.2, help="peak lr, reached after the warm-up")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2, as torch.optim.SGD's weight_decay")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier; 0.125 for a quick CPU check")
    p.add_argument("--train-subset", type=int, help="train on this many images (a fixed random subset)")
    p.add_argument("--test-subset", type=int, help="evaluate on this many test images")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on for CUDA")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.width <= 0:
        p.error("--epochs, --batch-size, --lr and --width must be positive")
    return args


def subset(data: Cifar10, train: int | None, test: int | None) -> Cifar10:
    """A fixed random subset (seed 0) of each split: the first images of a split may all be one class."""
    rng = np.random.default_rng(0)
    keep_train = np.sort(rng.permutation(len(data.train_labels))[:train])
    keep_test = np.sort(rng.permutation(len(data.test_labels))[:test])
    return dataclasses.replace(
        data,
        train_images=data.train_images[keep_train],
        train_labels=data.train_labels[keep_train],
        test_images=data.test_images[keep_test],
        test_labels=data.test_labels[keep_test],
    )


def warmup_cosine(total_steps: int, warmup_steps: int):
    """lr multiplier per step: linear from 0.1 to 1 over the warm-up, then a cosine down to 0 at the end."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def evaluate(model, loader, autocast) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    for images, labels in loader:
        with autocast:
            correct += (model(images).argmax(1) == labels).sum()
    return correct.item() / loader.num_samples


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    on_gpu = device.type == "cuda"
    # bf16 on the GPU: batches arrive in bf16 and matmuls/convolutions run in it; fp32 on the CPU.
    dtype = torch.bfloat16 if on_gpu else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu)

    data = load_cifar10()
    if args.train_subset or args.test_subset:
        data = subset(data, args.train_subset, args.test_subset)
    # The whole split lives on `device` as uint8; each batch is gathered, shifted, flipped and normalised there.
    # Training batches drop the last partial batch (static shapes for torch.compile).
    loader_args = dict(dataset=data, backend="torch", device=device, dtype=dtype)
    train = build_loader("train", batch_size=args.batch_size, seed=args.seed, **loader_args)
    # 1000 divides the 10 000 test images: no partial batch, so a compiled model sees one evaluation shape.
    test = build_loader("test", batch_size=1000, **loader_args)
    if len(train) == 0:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the {len(data.train_labels)} training images")

    model = resnet18(width=args.width).to(device, memory_format=torch.channels_last)
    optimizer = FusedSGDW(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    total_steps = args.epochs * len(train)
    warmup_steps = round(args.warmup_epochs * len(train))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps))
    # Compile the model, not the optimizer step: FusedSGDW is already one kernel launch per step.
    forward = torch.compile(model) if (on_gpu if args.compile is None else args.compile) else model

    compiled = forward is not model
    kernel = available_backends(device)[0]  # what FusedSGDW's backend="auto" takes on this device
    print(f"{len(data.train_labels)} training images, {len(train)} steps an epoch, {device}, {dtype}, ", end="")
    print(f"compiled: {compiled}, FusedSGDW backend: {kernel}")
    print("epoch  train_loss  test_acc  seconds  images/s")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
        for images, labels in train:
            with autocast:
                logits = forward(images)
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            loss_sum += loss.detach()
        train_loss = loss_sum.item() / len(train)  # the epoch's one sync
        seconds = time.perf_counter() - epoch_start
        accuracy = evaluate(forward, test, autocast)
        images_per_s = len(train) * args.batch_size / seconds
        print(f"{epoch:5d}  {train_loss:10.4f}  {accuracy:8.4f}  {seconds:7.1f}  {images_per_s:8.0f}")
        if not math.isfinite(train_loss):
            raise SystemExit(f"the loss diverged in epoch {epoch}: lower --lr (now {args.lr})")
    print(f"final test accuracy {accuracy:.4f} after {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
