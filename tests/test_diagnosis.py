"""fasttrick.results.diagnosis on synthetic metric histories: each failure mode, and healthy runs that raise none."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict

import pytest

from fasttrick.results.diagnosis import (
    FLAGGED,
    HEALTHY,
    MODES,
    NOT_JUDGED,
    THRESHOLDS,
    Thresholds,
    diagnose,
    val_swing,
)


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


# ------------------------------------------------------------------------------------------------------------
# Boundaries and branches, each pinned by a case that fails when one comparison, operator or number changes.
# EXACT uses thresholds that are exact binary fractions, so a value can sit exactly on a threshold.

EXACT = Thresholds(
    chance_acc=0.0625,
    near_chance_margin=0.0625,
    swing_spread=0.125,
    swing_drop=0.25,
    val_loss_rise=0.5,
    gap_growth=0.25,
    lr_floor_ratio=0.25,
    min_floor_fraction=0.25,
    improving_gain=0.25,
    diverged_loss=4.0,
)


def test_the_documented_default_thresholds():
    """The values Thresholds' docstring gives reasons for."""
    assert asdict(THRESHOLDS) == {
        "chance_acc": 0.10,
        "near_chance_margin": 0.05,
        "early_fraction": 0.10,
        "min_early_epochs": 3,
        "swing_window_fraction": 0.20,
        "min_swing_window": 4,
        "swing_spread": 0.03,
        "swing_drop": 0.05,
        "val_loss_rise": 0.10,
        "gap_growth": 0.02,
        "lr_floor_ratio": 1e-3,
        "min_floor_fraction": 0.10,
        "improving_gain": 0.01,
        "diverged_loss": pytest.approx(4.60517, abs=1e-5),
    }


def test_the_shortest_run_each_mode_judges():
    assert {mode: THRESHOLDS.shortest(mode) for mode in MODES} == {
        "diverged": 1,
        "not_learning": 3,
        "unstable": 7,
        "overfitting": 7,
        "lr_floor": 3,
    }
    three = diagnose(rows([0.3, 0.4, 0.5]))
    assert set(three.not_judged) == {"unstable", "overfitting"}
    assert set(diagnose(rows([0.3])).not_judged) == {"not_learning", "unstable", "overfitting", "lr_floor"}
    assert "needs 1 finished epoch" in diagnose([], "pending").not_judged["diverged"]
    assert diagnose([], "diverged").findings[0].summary == "the trainer stopped the run as diverged after epoch 0"
    assert diagnose(rows([0.3, 0.4]), "diverged").findings[0].summary.endswith("after epoch 2")


def test_three_outcomes_per_mode_and_scope():
    first = diagnose(rows([0.10, 0.11, 0.10, 0.35, 0.5, 0.6, 0.65, 0.7, 0.72, 0.74]))
    assert first.outcome("not_learning") == FLAGGED
    assert first.outcome("not_learning", "first_epochs") == FLAGGED
    assert first.outcome("not_learning", "throughout") == HEALTHY
    assert first.outcome("unstable") == HEALTHY
    assert diagnose(rows([0.3, 0.4])).outcome("unstable") == NOT_JUDGED
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.findings[0].mode = "x"


def test_the_first_epochs_loss_is_not_divergence_but_the_seconds_is():
    """Epoch 1 starts from a random network (loss ln 10 and more); from epoch 2 on, above the threshold is."""
    assert diagnose(rows([0.1, 0.2, 0.3], train_loss=[9.0, 2.0, 1.9])).modes == ()
    finding = diagnose(rows([0.1, 0.2, 0.3], train_loss=[2.2, 4.7, 1.9])).findings[0]
    assert (finding.mode, finding.evidence["epoch"]) == ("diverged", 2)
    assert "above 4.61 (2 ln 10, Thresholds.diverged_loss)" in finding.summary
    assert diagnose(rows([0.5, 0.6, 0.7], train_loss=[2.0, 4.0, 1.0]), thresholds=EXACT).modes == ()


def test_not_learning_at_exactly_the_ceiling():
    assert diagnose(rows([0.125, 0.0625, 0.125]), thresholds=EXACT).findings[0].evidence["scope"] == "throughout"
    accs = [0.0625, 0.125, 0.125, 0.25, 0.25, 0.25]
    evidence = diagnose(rows(accs), thresholds=EXACT).findings[0].evidence
    assert (evidence["scope"], evidence["first_epoch_above"]) == ("first_epochs", 4)


def test_unstable_at_exactly_the_spread_and_the_drop():
    """Changes of +-0.25 after the first 3 epochs: spread 0.25 and drops of 0.25, both exactly on EXACT's drop."""
    accs = [0.75, 0.75, 0.75, 1.0, 0.75, 1.0, 0.75, 1.0]
    finding = diagnose(rows(accs), thresholds=EXACT).findings[0]
    assert finding.mode == "unstable" and finding.evidence["epochs"] == [3, 7]
    assert (
        finding.summary
        == "val acc's epoch-to-epoch changes spread 25.0 points (std) over epochs 3-7, with a drop of 25.0 points"
    )
    on_the_spread = dataclasses.replace(EXACT, swing_spread=0.25)
    assert diagnose(rows(accs), thresholds=on_the_spread).modes == ()


def test_a_spread_between_3_and_6_points_with_a_5_point_drop_is_unstable():
    """The default thresholds: changes of +-5.5 points, a spread of 5.5 (> 3, < 6) and drops of 5.5 (>= 5, < 10)."""
    accs = [0.3, 0.45, 0.55] + [0.60 + (0.0275 if e % 2 else -0.0275) for e in range(12)]
    finding = diagnose(rows(accs)).findings[0]
    assert finding.mode == "unstable"
    assert 0.03 < finding.evidence["spread"] < 0.06 and 0.05 <= finding.evidence["largest_drop"] < 0.10


def test_a_single_drop_with_a_small_spread_is_not_unstable():
    accs = [0.3, 0.45, 0.55] + [0.60 + 0.01 * e for e in range(8)] + [0.62] + [0.63 + 0.01 * e for e in range(8)]
    assert "unstable" not in diagnose(rows(accs)).modes


def test_the_swing_windows_cover_the_run_after_the_first_epochs_to_its_last_epoch():
    """Calm until the last window (epochs 16-20 of 20), which swings: found, and dated there."""
    accs = [0.3, 0.45, 0.55] + [0.6 + 0.005 * e for e in range(13)] + [0.72, 0.62, 0.72, 0.62]
    finding = diagnose(rows(accs)).findings[0]
    assert finding.mode == "unstable" and finding.evidence["epochs"] == [16, 20]
    assert val_swing(rows(accs)) == pytest.approx(finding.evidence["spread"], abs=1e-4)
    calm = [0.3, 0.45, 0.55] + [0.56 + 0.01 * e for e in range(17)]
    assert val_swing(rows(calm)) == pytest.approx(0.0, abs=1e-9)


def overfit_rows(val_loss: list[float], train_acc: list[float], val_acc: list[float]) -> list[dict]:
    return rows(val_acc, train_acc=train_acc, val_loss=val_loss)


def test_overfitting_at_exactly_the_rise_and_the_gap_growth():
    """7 epochs (window 4): val loss lowest (1.0) at epoch 3, the last 4 average 1.5 (+50%); the gap 0 -> 0.25."""
    val_loss = [2.0, 1.5, 1.0, 1.5, 1.5, 1.5, 1.5]
    val_acc = [0.5] * 7
    train_acc = [0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75]
    finding = diagnose(overfit_rows(val_loss, train_acc, val_acc), thresholds=EXACT).findings[0]
    assert finding.mode == "overfitting"
    assert finding.evidence["val_loss_rise"] == 0.5 and finding.evidence["gap_last"] == 0.25
    assert finding.evidence["min_val_loss_epoch"] == 3


def test_val_loss_rising_without_a_growing_gap_is_not_overfitting():
    val_loss = [2.0, 1.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert diagnose(overfit_rows(val_loss, [0.75] * 7, [0.5] * 7), thresholds=EXACT).modes == ()
    assert (
        diagnose(
            overfit_rows([2.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0], [0.5] * 3 + [1.0] * 4, [0.5] * 7), thresholds=EXACT
        ).modes
        == ()
    )


def test_a_val_loss_minimum_inside_the_last_window_is_not_overfitting():
    """The last epoch has the lowest val loss (the window's mean is far above it, and its gap grew): not rising."""
    val_loss = [2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 1.0]
    train_acc = [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 0.5]
    assert diagnose(overfit_rows(val_loss, train_acc, [0.5] * 7), thresholds=EXACT).modes == ()


def test_a_val_loss_of_zero_is_its_minimum_without_dividing_by_it():
    val_loss = [2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert diagnose(overfit_rows(val_loss, [0.5] * 3 + [1.0] * 4, [0.5] * 7), thresholds=EXACT).modes == ()


def test_overfitting_between_the_default_thresholds():
    """Default thresholds: a 15% rise (10-20%) and 3 points of gap growth (2-4) are over-fitting."""
    n = 20
    val_loss = [1.5 - 0.05 * e for e in range(10)] + [1.05 * 1.15] * 10  # lowest 1.05 at epoch 10, then +15%
    train_acc = [0.5 + 0.03 * e for e in range(10)] + [0.80] * 10
    val_acc = [0.5 + 0.03 * e for e in range(10)] + [0.74] * 10  # gap 0 -> 6 points... kept at 3 below
    val_acc = [a - 0.0 for a in val_acc[:10]] + [0.77] * 10
    finding = diagnose(overfit_rows(val_loss, train_acc, val_acc)).findings[0]
    assert finding.mode == "overfitting" and len(val_loss) == n
    assert 0.10 <= finding.evidence["val_loss_rise"] < 0.20 and 0.02 <= finding.evidence["gap_last"] < 0.04


def floor_rows(lr: list[float], accs: list[float]) -> list[dict]:
    return rows(accs, lr=lr)


def test_lr_floor_late_while_still_improving_with_its_gains():
    """16 epochs: lr under the floor (0.25 x peak) for the last 4 (25%), crossing at epoch 13, after a gain of
    exactly 0.25 over the window before (epochs 9-13): flagged, improving, not early."""
    lr = [1.0] * 12 + [0.125] * 4
    accs = [0.25] * 8 + [0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 1.0]
    finding = diagnose(floor_rows(lr, accs), thresholds=EXACT).findings[0]
    assert finding.mode == "lr_floor"
    assert finding.evidence["epoch_below_floor"] == 13 and finding.evidence["epochs_below_floor"] == 4
    assert finding.evidence["val_acc_gain_before"] == 0.25 and finding.evidence["val_acc_gain_after"] == 0.25
    assert finding.evidence["still_improving"] and not finding.evidence["crossed_in_first_half"]
    assert "(peak 1 x 0.25)" in finding.summary


def test_lr_floor_needs_its_share_of_the_run_below_the_floor():
    lr, accs = [1.0] * 13 + [0.125] * 3, [0.25] * 8 + [0.5] * 4 + [0.75] * 4  # 3 of 16 epochs < 25%
    assert diagnose(floor_rows(lr, accs), thresholds=EXACT).modes == ()
    short = [1.0, 1.0, 0.125, 0.125]  # 4 epochs: 2 below is the minimum, whatever the share
    assert diagnose(floor_rows(short, [0.25, 0.5, 0.75, 0.75]), thresholds=EXACT).modes == ("lr_floor",)
    assert diagnose(floor_rows([1.0, 1.0, 1.0, 0.125], [0.25, 0.5, 0.75, 0.75]), thresholds=EXACT).modes == ()


def test_lr_floor_without_improvement_counts_only_in_the_first_half():
    flat = [0.5] * 16
    at_half = [1.0] * 8 + [0.125] * 8  # crossing at index 8 of 16: not in the first half
    assert diagnose(floor_rows(at_half, flat), thresholds=EXACT).modes == ()
    early = [1.0] * 6 + [0.125] * 10
    finding = diagnose(floor_rows(early, flat), thresholds=EXACT).findings[0]
    assert finding.evidence["crossed_in_first_half"] and not finding.evidence["still_improving"]
    assert diagnose(floor_rows([1.0] * 10 + [0.125] * 6, flat), thresholds=EXACT).modes == ()


def test_lr_floor_gain_is_measured_from_the_start_when_the_window_reaches_before_it():
    lr = [1.0, 1.0, 0.125, 0.125, 0.125, 0.125, 0.125, 0.125]
    accs = [0.25, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75]
    evidence = diagnose(floor_rows(lr, accs), thresholds=EXACT).findings[0].evidence
    assert evidence["val_acc_gain_before"] == 0.5 and evidence["val_acc_gain_after"] == 0.0


def test_lr_floor_ignores_epochs_without_a_val_acc():
    history = floor_rows([1.0, 1.0, 1.0, 0.125, 0.125, 0.125, 0.125, 0.125], [0.25, 0.5, 0.75] + [1.0] * 5)
    history[0]["val_acc"] = None
    evidence = diagnose(history, thresholds=EXACT).findings[0].evidence
    assert evidence["val_acc_gain_before"] == 0.5 and evidence["epochs_below_floor"] == 5


def test_a_val_loss_minimum_at_the_first_epoch_of_the_last_window_is_not_overfitting():
    val_loss = [2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0]  # lowest at index 3 = n - window: inside the last window
    train_acc = [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert diagnose(overfit_rows(val_loss, train_acc, [0.5] * 7), thresholds=EXACT).modes == ()
