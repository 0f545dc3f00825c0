"""Synthetic study folders for the results tests: grid folders as the trainer leaves them, with made-up curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: the claim tests write ~200 configs
EPOCHS = 30  # the quick profile's length (a shorter run is another setting); the early epoch is 8


def curve(final: float, *, rate: float = 4.0, swing: float = 0.0, n: int = EPOCHS) -> list[float]:
    """Val acc rising from ~0.3 to `final` (faster with a larger rate), plus an alternating swing (points / 100)."""
    return [
        final - (final - 0.3) * math.exp(-rate * e / n) + (swing * (1 if e % 2 else -1) if e >= 3 else 0.0)
        for e in range(n)
    ]


def metrics(val_acc: list[float], lr: float = 0.1, **columns: list[float]) -> list[dict]:
    """Metrics rows for val_acc; train_acc, val_loss, train_loss follow it unless given."""
    rows = [
        {
            "epoch": e + 1,
            "train_loss": 1.5 - a,
            "train_acc": min(1.0, a + 0.01),
            "val_loss": 1.6 - a,
            "val_acc": a,
            "lr": lr,
        }
        for e, a in enumerate(val_acc)
    ]
    for key, values in columns.items():
        for row, value in zip(rows, values, strict=True):
            row[key] = value
    return rows


def config(seed: int, optimizer: dict, scheduler: dict, epochs: int = EPOCHS, **extra: dict) -> dict:
    """A resolved run config, as the trainer writes config.yaml (only the keys the report reads vary)."""
    return {
        "seed": seed,
        "data": {"root": None, "batch_size": 512},
        "model": {"name": "resnet18", "width": 1.0},
        "train": {"epochs": epochs, "device": "auto"},
        "optimizer": optimizer,
        "scheduler": scheduler,
        "warmup": {"epochs": 0, "start_factor": 0.1},
        **extra,
    }


def write_study(folder: Path, name: str, runs: dict[str, tuple[dict, list[dict]]], status: str = "finished") -> Path:
    """A grid folder: grid.yaml with the study's name, one run folder per run (config.yaml, metrics rows)."""
    folder.mkdir(parents=True)
    (folder / "grid.yaml").write_text(yaml.dump({"name": name, "runs": [{"name": r} for r in runs]}, Dumper=DUMPER))
    for run_name, (run_config, rows) in runs.items():
        run_dir = folder / run_name
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(yaml.dump(run_config, Dumper=DUMPER))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        (run_dir / "status.json").write_text(json.dumps({"status": status, "epoch": len(rows), "message": None}))
    return folder


def sgd(lr: float = 0.2, momentum: float = 0.9, weight_decay: float = 5.0e-4) -> dict:
    return {"name": "fused_sgdw", "lr": lr, "momentum": momentum, "weight_decay": weight_decay}


def write_lr_momentum(folder: Path, epochs: int = EPOCHS, swing: float = 0.08, fast_rate: float = 8.0) -> Path:
    """2 x 2 configs x 2 seeds: large lr + large momentum rises fastest (rate fast_rate) and steadily (final 90%
    and 92% over the seeds); large lr + small momentum swings by `swing` an epoch."""
    shapes = {
        (0.01, 0.5): {"final": 0.80, "rate": 2.0},
        (0.01, 0.9): {"final": 0.84, "rate": 2.5},
        (0.2, 0.5): {"final": 0.85, "rate": 4.0, "swing": swing},
        (0.2, 0.9): {"final": 0.90, "rate": fast_rate},
    }
    runs = {}
    for (lr, momentum), shape in shapes.items():
        for seed in (0, 1):
            val_acc = curve(**{**shape, "final": shape["final"] + 0.02 * seed}, n=epochs)
            runs[f"lr{lr}-m{momentum}-seed{seed}"] = (
                config(seed, sgd(lr, momentum), {"name": "constant"}, epochs),
                metrics(val_acc),
            )
    return write_study(folder, "lr_momentum", runs)
