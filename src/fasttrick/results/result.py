"""One run's headline numbers from its per-epoch metrics: what result.json and the summary table hold."""

from __future__ import annotations

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
