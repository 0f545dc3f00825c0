"""Each of the post's nine claims reaches each of its outcomes (confirmed, refuted, inconclusive) from small
synthetic study folders; the inconclusive cases are the ones whose measure cannot be taken (runs too short for
the diagnosis, one optimizer for "every optimizer", a difference within noise)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from fasttrick.results.claims import evaluate_claims
from fasttrick.results.study import load_studies

from results_helpers import EPOCHS, config, curve, metrics, sgd, write_lr_momentum, write_study

SHORT = 6  # a scaled-down run: too short for `unstable` and `overfitting` (both judge from 7 epochs)


def plateau(mode: str, min_lr: float = 0.0) -> dict:
    return {"name": "plateau", "mode": mode, "monitor": "val_acc", "factor": 0.1, "min_lr": min_lr}


def group2(
    folder: Path,
    *,
    low=(0.90, 10.0),
    high=(0.93, 5.0),
    fix: float | None = 0.93,
    cosine_swing=0.0,
    swing=0.02,
    n=EPOCHS,
):
    """plateau(min) and plateau(max) as (final, rate); an optional plateau(min, min_lr) ending at fix; cosine
    fastest, the others swinging 2 points an epoch (spread ~4 points but no 5-point drop: not unstable)."""
    runs = {
        "plateau-min-acc-seed0": (
            config(0, sgd(), plateau("min"), n),
            metrics(curve(low[0], rate=low[1], swing=swing, n=n)),
        ),
        "plateau-max-acc-seed0": (
            config(0, sgd(), plateau("max"), n),
            metrics(curve(high[0], rate=high[1], swing=swing, n=n)),
        ),
        "cosine-seed0": (
            config(0, sgd(), {"name": "cosine", "eta_min": 2e-3}, n),
            metrics(curve(0.92, rate=12.0, swing=cosine_swing, n=n)),
        ),
    }
    if fix is not None:
        runs["plateau-min-acc-minlr-seed0"] = (
            config(0, sgd(), plateau("min", 2e-4), n),
            metrics(curve(fix, rate=5.0, swing=swing, n=n)),
        )
    return [write_study(folder / "group2", "group2", runs)]


def group3(folder: Path, *, adam=0.85, sgd_final=0.93, nadam=0.90, nadam_cosine=0.93, adam_wd=5e-4):
    adam_opt = {"name": "adam", "lr": 1e-3, "weight_decay": adam_wd}
    nadam_opt = {"name": "nadam", "lr": 1e-3, "weight_decay": 5e-4}
    step = {"name": "step", "step_size": "35%", "gamma": 0.1}
    runs = {
        "adam-seed0": (config(0, adam_opt, {"name": "constant"}), metrics(curve(adam))),
        "sgd-step-seed0": (config(0, sgd(), step), metrics(curve(sgd_final))),
        "nadam-seed0": (config(0, nadam_opt, {"name": "constant"}), metrics(curve(nadam))),
        "nadam-cosine-seed0": (config(0, nadam_opt, {"name": "cosine", "eta_min": 1e-5}), metrics(curve(nadam_cosine))),
    }
    return [write_study(folder / "group3", "group3", runs)]


def group1(folder: Path, finals: dict[str, tuple[float, float]], sgd_cosine: float | None = None):
    """Per optimizer (sgd, adam, ...): a constant-lr config and its StepLR twin, ending at (constant, step); and
    optionally an SGD cosine twin too (two scheduled twins: neither is the other's constant-lr baseline)."""
    optimizers = {"sgd": sgd(), "adam": {"name": "adam", "lr": 1e-3, "weight_decay": 5e-4}}
    step = {"name": "step", "step_size": "35%", "gamma": 0.1}
    runs = {}
    for name, (constant, scheduled) in finals.items():
        runs[f"{name}-constant-seed0"] = (config(0, optimizers[name], {"name": "constant"}), metrics(curve(constant)))
        if scheduled is not None:
            runs[f"{name}-step-seed0"] = (config(0, optimizers[name], step), metrics(curve(scheduled)))
    if sgd_cosine is not None:
        runs["sgd-cosine-seed0"] = (config(0, sgd(), {"name": "cosine", "eta_min": 0}), metrics(curve(sgd_cosine)))
    return [write_study(folder / "group1", "group1", runs)]


def overfitting(n: int) -> list[dict]:
    """Train acc climbs to ~100% while val acc saturates at 85% by epoch 10 and val loss rises after it."""
    val_acc = [min(0.85, 0.48 + 0.04 * e) for e in range(n)]
    return metrics(
        val_acc,
        train_acc=[min(0.999, 0.5 + 0.04 * e) for e in range(n)],
        val_loss=[max(0.5, 1.5 - 0.1 * e) + max(0.0, 0.04 * (e - 10)) for e in range(n)],
    )


def l2(folder: Path, *, n=EPOCHS, small_overfits=True, good=0.90, wds=(0, 1e-2, 5e-2)):
    """The smallest weight decay over-fits (or not), 1e-2 ends at good, the largest stays near chance."""
    smallest, middle, largest = wds
    wd = {middle: metrics(curve(good if middle == 1e-2 else 0.88, n=n))}  # not in wd order: the claim sorts
    wd[largest] = metrics([0.10 + 0.01 * (e % 3) for e in range(n)])  # near chance throughout
    wd[smallest] = overfitting(n) if small_overfits else metrics(curve(0.86, n=n))
    if 1e-2 not in wd:
        wd[1e-2] = metrics(curve(good, n=n))
    cosine = {"name": "cosine", "eta_min": 2e-3}
    runs = {f"wd{w}-seed0": (config(0, sgd(weight_decay=w), cosine, n), rows) for w, rows in wd.items()}
    return [write_study(folder / "l2", "l2", runs)]


def schedules(folder: Path, *, wide: float, narrow: float, eta_min: float | None = 2e-4):
    """Cosine twins from lr 0.2: eta_min 2e-4 (3 orders below; 0 or unset: infinitely many) and 2e-3 (2 orders),
    ending at wide / narrow."""
    runs = {
        "cosine-3orders-seed0": (config(0, sgd(), {"name": "cosine", "eta_min": eta_min}), metrics(curve(wide))),
        "cosine-2orders-seed0": (config(0, sgd(), {"name": "cosine", "eta_min": 2e-3}), metrics(curve(narrow))),
    }
    return [write_study(folder / "schedules", "schedules", runs)]


def lr_momentum(**kwargs) -> Callable[[Path], list[Path]]:
    return lambda folder: [write_lr_momentum(folder / "lr_momentum", **kwargs)]


CASES = [
    # claim, expected outcome, the study folders, a phrase the reason must hold
    (1, "confirmed", lr_momentum(), "unstable in 0 of 2 seeds"),
    (1, "refuted", lr_momentum(fast_rate=1.0), "fastest"),
    (1, "inconclusive", lr_momentum(epochs=SHORT), "unstable not judged in 2 of 2 seeds"),
    (2, "confirmed", lr_momentum(), "unstable in 2 of 2 seeds"),
    (2, "refuted", lr_momentum(swing=0.0), "unstable in 0 of 2 seeds"),
    (2, "inconclusive", lr_momentum(epochs=SHORT), "runs of 6 epochs, the diagnosis judges from 7"),
    (3, "confirmed", lambda f: group1(f, {"sgd": (0.88, 0.93), "adam": (0.85, 0.88)}), "2 of 2 optimizers present"),
    (3, "refuted", lambda f: group1(f, {"sgd": (0.88, 0.93), "adam": (0.88, 0.85)}), "adam: "),
    (3, "inconclusive", lambda f: group1(f, {"sgd": (0.88, 0.93)}), "1 of 1 optimizers present"),
    (3, "confirmed", lambda f: group1(f, {"sgd": (0.88, 0.91), "adam": (0.85, 0.88)}, sgd_cosine=0.94), "2 of 2"),
    (3, "inconclusive", lambda f: group1(f, {"sgd": (0.88, 0.93), "adam": (0.85, None)}), "1 of 2 optimizers"),
    (4, "confirmed", group2, "min_lr fix"),
    (4, "confirmed", lambda f: group2(f, fix=0.96), "min_lr fix: group2/plateau-min-acc-minlr"),
    (4, "refuted", lambda f: group2(f, low=(0.93, 8.0), high=(0.90, 3.0)), "ends lower"),
    (4, "inconclusive", lambda f: group2(f, fix=None), "no plateau(min, min_lr > 0) config"),
    (5, "confirmed", group2, "most stable"),
    (5, "refuted", lambda f: group2(f, cosine_swing=0.08), "unstable in 1 of 1 seeds"),
    (5, "refuted", lambda f: group2(f, cosine_swing=0.02, swing=0.0), "most stable, val swing: group2/cosine"),
    (5, "inconclusive", lambda f: group2(f, n=SHORT), "unstable not judged"),
    (6, "confirmed", group3, "clearly"),
    (6, "refuted", lambda f: group3(f, adam=0.93), "clearly"),
    (6, "inconclusive", lambda f: group3(f, adam=0.922), "clearly"),
    (
        6,
        "inconclusive",
        lambda f: group3(f, adam_wd=0.0),
        "needs exactly one config with Adam lr 1e-3, weight_decay > 0",
    ),
    (7, "confirmed", l2, "overfitting in 1 of 1 seeds"),
    (7, "refuted", lambda f: l2(f, small_overfits=False), "overfitting in 0 of 1 seeds"),
    (7, "refuted", lambda f: l2(f, good=0.80), "1e-2 good"),
    (7, "inconclusive", lambda f: l2(f, wds=(0, 5e-3, 1e-2)), "l2 has no weight_decay above 1e-2"),
    (7, "confirmed", lambda f: l2(f, wds=(0, 1e-2, 1.5e-2)), "too large"),
    (7, "inconclusive", lambda f: l2(f, n=SHORT), "overfitting not judged in 1 of 1 seeds"),
    (8, "confirmed", lambda f: schedules(f, wide=0.90, narrow=0.92), "3.0 vs 2.0 orders"),
    (8, "refuted", lambda f: schedules(f, wide=0.93, narrow=0.91), "3.0 vs 2.0 orders"),
    (8, "confirmed", lambda f: schedules(f, wide=0.90, narrow=0.92, eta_min=0), "inf vs 2.0 orders"),
    (8, "confirmed", lambda f: schedules(f, wide=0.90, narrow=0.92, eta_min=None), "inf vs 2.0 orders"),
    (8, "inconclusive", lambda f: schedules(f, wide=0.920, narrow=0.922), "margin 0.50"),
    (9, "confirmed", group3, "as strong as SGD"),
    (9, "refuted", lambda f: group3(f, nadam=0.80), "beats Adam"),
    (9, "inconclusive", lambda f: group3(f, nadam=0.852), "beats Adam"),
]


@pytest.mark.parametrize(("claim", "expected", "build", "phrase"), CASES)
def test_each_claim_reaches_each_outcome(tmp_path, claim, expected, build, phrase):
    verdict = evaluate_claims(load_studies(build(tmp_path)))[claim - 1]
    assert verdict.verdict == expected, verdict.reason
    assert phrase in verdict.reason


def test_claim_7_without_weight_decays_names_what_is_missing(tmp_path):
    cosine = {"name": "cosine", "eta_min": 2e-3}
    runs = {
        f"lr{lr}-seed0": (config(0, {"name": "fused_sgdw", "lr": lr}, cosine), metrics(curve(0.9))) for lr in (0.1, 0.2)
    }
    verdict = evaluate_claims(load_studies([write_study(tmp_path / "l2", "l2", runs)]))[6]
    assert (verdict.verdict, verdict.reason) == (
        "inconclusive",
        "l2 has no weight_decay above 1e-2 (a 'too large' one)",
    )


def test_a_verdict_is_immutable(tmp_path):
    verdict = evaluate_claims(load_studies(group1(tmp_path, {"sgd": (0.88, 0.93)})))[2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.verdict = "confirmed"


def test_verdicts_are_numbered_and_claim_3_rests_on_each_twin_once(tmp_path):
    verdicts = evaluate_claims(load_studies(group1(tmp_path, {"sgd": (0.88, 0.91), "adam": (0.85, 0.88)}, 0.94)))
    assert [v.claim for v in verdicts] == list(range(1, 10))
    names = [g.name for g in verdicts[2].evidence]
    assert sorted(names) == ["adam-constant", "adam-step", "sgd-constant", "sgd-cosine", "sgd-step"]


def test_claim_3_names_the_optimizers_tested_present_and_in_the_post(tmp_path):
    verdict = evaluate_claims(load_studies(group1(tmp_path, {"sgd": (0.88, 0.93)})))[2]
    assert verdict.reason.startswith("confirmed for 1 of 1 optimizers present (sgd of sgd); the post names 3")
    assert "needs each optimizer present tested, and more than one" in verdict.reason


def test_a_short_lr_momentum_grid_takes_no_diagnosis_verdict(tmp_path):
    """A 6-epoch grid: 6 epochs cannot carry "unstable" either way, so neither claim 1 nor 2 is refuted."""
    verdicts = evaluate_claims(load_studies(lr_momentum(epochs=SHORT)(tmp_path)))
    assert [verdicts[0].verdict, verdicts[1].verdict] == ["inconclusive", "inconclusive"]


def test_each_verdict_carries_its_power(tmp_path):
    verdicts = evaluate_claims(load_studies(lr_momentum()(tmp_path) + group2(tmp_path)))
    assert verdicts[1].power == "2 seed(s) per config, 30 epochs"
    assert verdicts[3].power.startswith("1 seed(s) per config, 30 epochs; single-run observation")
    assert "exceeds the seed spread" in verdicts[0].reason
    assert "single runs, no seed spread" in verdicts[3].reason
    assert verdicts[6].power == "no runs"  # l2 missing: nothing to rest on


def test_a_diverged_run_without_a_final_val_acc_makes_its_comparison_inconclusive(tmp_path):
    (folder,) = schedules(tmp_path, wide=0.90, narrow=0.92)
    run_dir = folder / "cosine-3orders-seed0"
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics([0.3, 0.35, math.nan])))
    (run_dir / "status.json").write_text(json.dumps({"status": "diverged", "epoch": 3}))
    verdict = evaluate_claims(load_studies([folder]))[7]
    assert verdict.verdict == "inconclusive" and "has no final val acc" in verdict.reason
