"""One run's headline numbers from its per-epoch metrics: what result.json and the summary table hold."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..runfiles import finite

# Accuracy milestones the table times: 90% is roughly where the post's runs separate, 93% is the target
# for the best quick run (the post's best, plateau on max, reached 0.935).
MILESTONES = (0.90, 0.93)


def milestone_keys(milestone: float) -> tuple[str, str]:
    """The result keys of one milestone: 0.93 -> ("epochs_to_93", "seconds_to_93")."""
    percent = round(milestone * 100)
    return f"epochs_to_{percent}", f"seconds_to_{percent}"


RESULT_KEYS = (
    "best_val_acc",
    "best_epoch",
    "final_val_acc",
    "epochs",
    *(key for milestone in MILESTONES for key in milestone_keys(milestone)),
    "images_per_s",
    "wall_seconds",
    "status",
)


# What each metric may be (the trainer writes every one as a JSON number; NaN/inf only when a run diverges):
# (lowest, highest) for a finite value. Anything else in a row -- an accuracy of 5.0, a negative time, "0.93"
# as text, a boolean -- is not a measurement, and a row holding it is skipped as malformed.
PLAUSIBLE = {
    "train_acc": (0.0, 1.0),
    "val_acc": (0.0, 1.0),
    "train_loss": (0.0, math.inf),
    "val_loss": (0.0, math.inf),
    "lr": (0.0, math.inf),
    "epoch_seconds": (0.0, math.inf),
    "images_per_s": (0.0, math.inf),
    "elapsed_seconds": (0.0, math.inf),
}


def malformed(row: Mapping[str, Any]) -> str | None:
    """Why a metrics row cannot be a measurement (its first bad field), or None when it is plausible."""
    epoch = row.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return f"epoch {epoch!r} is not a whole number >= 0"
    for key, (low, high) in PLAUSIBLE.items():
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key} {value!r} is not a number"
        if math.isfinite(value) and not low <= value <= high:
            bounds = f"in {low:g}..{high:g}" if math.isfinite(high) else f">= {low:g}"
            return f"{key} {value!r} is not {bounds}"
    return None


def plausible_rows(rows: Sequence[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    """``rows`` without the malformed ones, each named in a warning (file, epoch, field and value)."""
    kept = []
    for row in rows:
        why = malformed(row)
        if why is None:
            kept.append(dict(row))
        else:
            warnings.warn(f"{where}: the row of epoch {row.get('epoch')!r} skipped as malformed: {why}", stacklevel=2)
    return kept


def run_result(metrics: Sequence[Mapping[str, Any]], status: str) -> dict[str, Any]:
    """One run's headline numbers from its per-epoch metrics (the rows of metrics.jsonl, in order).

    Returns a dict with `RESULT_KEYS`:

    - ``best_val_acc``, ``best_epoch``: the highest val_acc (fraction 0..1) of any epoch and the first
      epoch that reached it.
    - ``final_val_acc``: the last epoch's val_acc, which is what the run ends with.
    - ``epochs``: the number of the last finished epoch (0 before the first).
    - ``epochs_to_90``, ``seconds_to_90``, ``epochs_to_93``, ``seconds_to_93``: the first epoch whose
      val_acc >= 0.90 / 0.93, and the run's elapsed_seconds at the end of it; None if never reached.
    - ``images_per_s``: mean training throughput over the epochs after the first, which pays
      torch.compile and warm-up; the first epoch's own value when it is the only one.
    - ``wall_seconds``: elapsed_seconds at the end of the last epoch.
    - ``status``: passed through ("finished", "diverged", ...).

    Non-finite values (NaN/inf from a diverged run) count as missing, and a number that cannot be
    computed (no epochs, every value missing) is None, so the result is always valid strict JSON.
    """
    val_acc = [finite(row.get("val_acc")) for row in metrics]
    scored = [(acc, row["epoch"]) for acc, row in zip(val_acc, metrics, strict=True) if acc is not None]
    best_val_acc, best_epoch = max(scored, key=lambda scored_epoch: scored_epoch[0]) if scored else (None, None)
    result: dict[str, Any] = {
        "best_val_acc": best_val_acc,
        "best_epoch": best_epoch,
        "final_val_acc": val_acc[-1] if metrics else None,
        "epochs": metrics[-1]["epoch"] if metrics else 0,
    }
    for milestone in MILESTONES:
        epochs_key, seconds_key = milestone_keys(milestone)
        reached = next(
            (row for acc, row in zip(val_acc, metrics, strict=True) if acc is not None and acc >= milestone), None
        )
        result[epochs_key] = reached["epoch"] if reached else None
        result[seconds_key] = finite(reached.get("elapsed_seconds")) if reached else None
    steady_epochs = metrics[1:] or metrics
    throughput = [x for x in (finite(row.get("images_per_s")) for row in steady_epochs) if x is not None]
    result["images_per_s"] = sum(throughput) / len(throughput) if throughput else None
    result["wall_seconds"] = finite(metrics[-1].get("elapsed_seconds")) if metrics else None
    result["status"] = status
    return result
