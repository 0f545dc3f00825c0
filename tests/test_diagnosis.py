"""fasttrick.results.diagnosis on synthetic metric histories: each failure mode, and healthy runs that raise none."""

from __future__ import annotations

import json
import math

import pytest

from fasttrick.results.diagnosis import MODES, THRESHOLDS, diagnose, val_swing


def rows(val_acc, *, train_acc=None, val_loss=None, train_loss=None, lr=None) -> list[dict]:
    """Metrics rows as metrics.jsonl holds them; unspecified columns follow a healthy run."""
    n = len(val_acc)
    train_acc = train_acc or [min(1.0, a + 0.02) for a in val_acc]
    val_loss = val_loss or [1.6 - a for a in val_acc]  # falls as val acc rises
    train_loss = train_loss or [1.5 - a for a in val_acc]
    lr = lr or [0.2 * (1 + math.cos(math.pi * e / n)) / 2 + 2e-3 for e in range(n)]  # cosine to 2e-3
    return [
        {
            "epoch": e + 1,
            "train_loss": train_loss[e],
            "train_acc": train_acc[e],
            "val_loss": val_loss[e],
            "val_acc": val_acc[e],
            "lr": lr[e],
        }
        for e in range(n)
    ]


def healthy(n: int) -> list[float]:
    """A smooth saturating curve from ~40% to ~93%, with +-0.3 point noise."""
    return [0.93 - 0.53 * math.exp(-4 * e / n) + 0.003 * (-1) ** e for e in range(n)]


@pytest.mark.parametrize("epochs", [10, 20, 30, 200])
def test_a_healthy_run_raises_nothing(epochs):
    diagnosis = diagnose(rows(healthy(epochs)), "finished")
    assert diagnosis.findings == ()
    assert diagnosis.not_judged == {}


def test_a_step_decay_jump_is_not_a_swing():
    """StepLR at 35% of 30 epochs: val acc jumps 8 points in one epoch, with no drop: not unstable, and the lr
    (0.2 -> 0.02 -> 0.002) never goes 3 orders below its peak."""
    accs = (
        [0.5 + 0.01 * e for e in range(11)]
        + [0.70 + 0.003 * e for e in range(11)]
        + [0.78 + 0.001 * e for e in range(8)]
    )
    lr = [0.2] * 11 + [0.02] * 11 + [0.002] * 8
    assert diagnose(rows(accs, lr=lr)).findings == ()


def test_diverged_on_a_non_finite_loss_and_on_the_trainers_status():
    history = rows([0.3, 0.35, 0.1], train_loss=[1.8, 1.7, math.nan])
    (finding,) = diagnose(history, "diverged").findings
    assert finding.mode == "diverged"
    assert finding.evidence == {"epoch": 3, "metric": "train_loss", "status": "diverged"}
    assert diagnose(rows([0.3, 0.35, 0.4]), "diverged").modes == ("diverged",)


def test_diverged_on_an_exploding_but_finite_loss():
    history = rows([0.3, 0.2, 0.1, 0.1], train_loss=[2.0, 3.0, 9.5, 8.0])
    finding = diagnose(history).findings[0]
    assert finding.mode == "diverged" and finding.evidence["epoch"] == 3 and finding.evidence["value"] == 9.5


def test_not_learning_throughout():
    """The post's too-large L2: 10% -> 12% -> 9% ..."""
    accs = [0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.10, 0.11, 0.09, 0.10]
    findings = {f.mode: f for f in diagnose(rows(accs)).findings}
    assert findings["not_learning"].evidence == {
        "scope": "throughout",
        "epochs": 10,
        "max_val_acc": 0.13,
        "ceiling": 0.15,
    }


def test_not_learning_for_the_first_epochs_then_learning():
    accs = [0.10, 0.11, 0.10, 0.35, 0.5, 0.6, 0.65, 0.7, 0.72, 0.74]
    finding = next(f for f in diagnose(rows(accs)).findings if f.mode == "not_learning")
    assert finding.evidence["scope"] == "first_epochs"
    assert finding.evidence["first_epochs"] == 3 and finding.evidence["first_epoch_above"] == 4


def test_early_window_scales_with_the_run_length():
    """K = 10% of the run, at least 3: 3 epochs of 30, 20 of 200. Chance for 15 of 200 epochs is not flagged."""
    assert THRESHOLDS.early_epochs(30) == 3 and THRESHOLDS.early_epochs(200) == 20
    accs = [0.1] * 15 + healthy(185)
    assert "not_learning" not in diagnose(rows(accs)).modes
    assert diagnose(rows([0.1] * 20 + healthy(180))).modes == ("not_learning",)


def test_unstable_val_acc_swings():
    """Large lr + small momentum as the post saw it: val acc swinging 10+ points from epoch to epoch."""
    accs = [0.3, 0.45, 0.55] + [0.62 + (0.08 if e % 2 else -0.06) for e in range(17)]
    (finding,) = diagnose(rows(accs)).findings
    assert finding.mode == "unstable"
    assert finding.evidence["spread"] > THRESHOLDS.swing_spread
    assert finding.evidence["largest_drop"] >= THRESHOLDS.swing_drop
    assert len(finding.evidence["changes"]) == THRESHOLDS.window(20) == 4
    assert val_swing(rows(accs)) >= finding.evidence["spread"] - 1e-4  # the largest spread of any window


def test_overfitting_gap_grows_while_val_loss_rises():
    n = 20
    train_acc = [min(0.999, 0.5 + 0.04 * e) for e in range(n)]
    val_acc = [min(0.85, 0.48 + 0.04 * e) for e in range(n)]  # saturates at epoch 10
    val_loss = [max(0.5, 1.5 - 0.1 * e) + max(0.0, 0.04 * (e - 10)) for e in range(n)]  # lowest at 10, then up
    (finding,) = diagnose(rows(val_acc, train_acc=train_acc, val_loss=val_loss)).findings
    assert finding.mode == "overfitting"
    assert finding.evidence["min_val_loss_epoch"] == 11 and finding.evidence["last_epochs"] == 4
    assert finding.evidence["val_loss_rise"] >= 0.10 and finding.evidence["gap_last"] > finding.evidence["gap_at_min"]


def test_lr_floor_plateau_without_min_lr():
    """Plateau(min on acc), factor 0.1, no min_lr: the lr falls 0.2 -> 2e-5 within 5 of 20 epochs while val acc
    is still rising, then val acc stalls."""
    lr = [0.2, 0.02, 0.002, 2e-4, 2e-5] + [2e-5 * 0.1**k for k in range(1, 16)]
    accs = [0.4, 0.55, 0.65, 0.7, 0.72] + [0.721 + 0.0001 * e for e in range(15)]
    (finding,) = diagnose(rows(accs, lr=lr)).findings
    assert finding.mode == "lr_floor"
    assert finding.evidence["epoch_below_floor"] == 5 and finding.evidence["epochs_below_floor"] == 16
    assert finding.evidence["still_improving"] and finding.evidence["crossed_in_first_half"]
    assert finding.evidence["floor"] == pytest.approx(2e-4)


def test_lr_floor_touched_only_in_the_last_epoch_is_fine():
    n = 20
    lr = [0.2 * (1 + math.cos(math.pi * e / (n - 1))) / 2 for e in range(n)]  # cosine to 0 at the last epoch
    assert diagnose(rows(healthy(n), lr=lr)).findings == ()


def test_short_history_is_not_judged_and_says_why():
    diagnosis = diagnose(rows([0.3, 0.4]), "running")
    assert diagnosis.findings == ()
    assert set(diagnosis.not_judged) == {"not_learning", "unstable", "overfitting", "lr_floor"}
    assert diagnosis.not_judged["unstable"] == "needs 7 epochs with a val acc, has 2"
    assert diagnose([], "pending").findings == ()


def test_diagnosis_json_is_strict_json_with_its_thresholds():
    history = rows([0.1] * 10, train_loss=[2.3] * 9 + [math.inf])
    document = diagnose(history, "diverged").to_json()
    text = json.dumps(document, allow_nan=False)  # raises on NaN/inf
    assert [d["mode"] for d in json.loads(text)["diagnoses"]] == ["diverged", "not_learning"]
    assert set(document["thresholds"]) >= {"chance_acc", "swing_spread", "lr_floor_ratio"}
    assert set(MODES) == {"diverged", "not_learning", "unstable", "overfitting", "lr_floor"}
