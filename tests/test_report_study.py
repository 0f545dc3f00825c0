"""REPORT.md across study folders (fasttrick.results, `python -m fasttrick.report DIR [DIR...]`) on
synthetic study folders, and the runner's diagnosis.json at the end of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from fasttrick import report
from fasttrick.engine import Outcome, Session
from fasttrick.grid import load_grid, run_grid
from fasttrick.results.claims import evaluate_claims
from fasttrick.results.report import write_report
from fasttrick.results.study import load_studies

from results_helpers import EPOCHS, curve, metrics

REPO = Path(__file__).resolve().parents[1]


def config(seed: int, optimizer: dict, scheduler: dict) -> dict:
    """A resolved run config, as the trainer writes config.yaml (only the keys the report reads vary)."""
    return {
        "seed": seed,
        "data": {"root": None, "batch_size": 512},
        "train": {"epochs": EPOCHS, "device": "auto"},
        "optimizer": optimizer,
        "scheduler": scheduler,
        "warmup": {"epochs": 0, "start_factor": 0.1},
    }


def write_study(folder: Path, name: str, runs: dict[str, tuple[dict, list[float]]]) -> Path:
    """A grid folder as the trainer leaves it: grid.yaml with the study's name, a finished run folder each."""
    folder.mkdir(parents=True)
    (folder / "grid.yaml").write_text(yaml.safe_dump({"name": name, "runs": [{"name": r} for r in runs]}))
    for run_name, (run_config, val_acc) in runs.items():
        run_dir = folder / run_name
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(yaml.safe_dump(run_config))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics(val_acc)))
        (run_dir / "status.json").write_text(json.dumps({"status": "finished", "epoch": EPOCHS, "message": None}))
    return folder


def write_lr_momentum(folder: Path) -> Path:
    """2 x 2 configs x 2 seeds, built so that claims 1 and 2 hold: large lr + large momentum rises fastest and
    steadily (final 90% and 92% over the seeds), large lr + small momentum swings 8 points an epoch."""
    constant = {"name": "constant"}
    shapes = {
        (0.01, 0.5): {"final": 0.80, "rate": 2.0},
        (0.01, 0.9): {"final": 0.84, "rate": 2.5},
        (0.2, 0.5): {"final": 0.85, "rate": 4.0, "swing": 0.08},
        (0.2, 0.9): {"final": 0.90, "rate": 8.0},
    }
    runs = {}
    for (lr, momentum), shape in shapes.items():
        for seed in (0, 1):
            optimizer = {"name": "fused_sgdw", "lr": lr, "momentum": momentum, "weight_decay": 5.0e-4}
            shape_for_seed = {**shape, "final": shape["final"] + 0.02 * seed}
            runs[f"lr{lr}-m{momentum}-seed{seed}"] = (config(seed, optimizer, constant), curve(**shape_for_seed))
    return write_study(folder, "lr_momentum", runs)


def write_group2(folder: Path) -> Path:
    """One seed; built so that claim 4 is refuted: plateau(min on acc) ends *higher* than plateau(max)."""
    sgd = {"name": "fused_sgdw", "lr": 0.2, "momentum": 0.9, "weight_decay": 5.0e-4}

    def plateau(mode: str, min_lr: float) -> dict:
        return {"name": "plateau", "mode": mode, "monitor": "val_acc", "factor": 0.1, "min_lr": min_lr}

    return write_study(
        folder,
        "group2",
        {
            "plateau-min-acc-seed0": (config(0, sgd, plateau("min", 0)), curve(0.93)),
            "plateau-max-acc-seed0": (config(0, sgd, plateau("max", 0)), curve(0.90)),
            "cosine-seed0": (config(0, sgd, {"name": "cosine", "eta_min": 2.0e-3}), curve(0.92, rate=6.0)),
        },
    )


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    return load_studies([write_lr_momentum(root / "lr_momentum"), write_group2(root / "group2")])


def test_runs_are_grouped_over_seeds_with_mean_and_std(studies):
    pick = next(g for g in studies["lr_momentum"].groups if g.name == "lr0.2-m0.9")
    assert pick.seeds == [0, 1] and len(studies["lr_momentum"].groups) == 4
    final = pick.stat("final_val_acc")
    assert final.n == 2
    assert final.mean == pytest.approx(0.91, abs=1e-3)  # seeds end at ~0.90 and ~0.92
    assert final.std == pytest.approx(math.sqrt(2) * 0.01, abs=1e-3)  # sample std of two values 0.02 apart


def test_claims_1_and_2_confirmed_claim_4_refuted_missing_studies_inconclusive(studies):
    verdicts = {v.claim: v for v in evaluate_claims(studies)}
    assert verdicts[1].verdict == "confirmed", verdicts[1].reason
    assert verdicts[2].verdict == "confirmed", verdicts[2].reason
    assert verdicts[4].verdict == "refuted", verdicts[4].reason
    assert "ends lower" in verdicts[4].reason and "(refuted)" in verdicts[4].reason
    for claim, study in ((6, "group3"), (7, "l2"), (9, "group3")):
        assert verdicts[claim].verdict == "inconclusive"
        assert verdicts[claim].reason == f"study {study} is not among the report's folders"
    # claim 4's evidence is the two plateau configs, chosen by their config values
    assert [g.name for g in verdicts[4].evidence] == ["plateau-min-acc", "plateau-max-acc"]


def test_claim_1_refuted_when_another_config_is_faster(tmp_path):
    folder = write_lr_momentum(tmp_path / "lr_momentum")
    for seed in (0, 1):  # the small-lr config now rises much faster than the pick
        faster = folder / f"lr0.01-m0.9-seed{seed}"
        (faster / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics(curve(0.95, rate=20.0))))
    verdict = evaluate_claims(load_studies([folder]))[0]
    assert verdict.verdict == "refuted" and "fastest" in verdict.reason


def test_a_running_config_makes_its_claim_inconclusive(tmp_path):
    folder = write_group2(tmp_path / "group2")
    (folder / "plateau-max-acc-seed0" / "status.json").write_text(json.dumps({"status": "running", "epoch": 20}))
    verdict = evaluate_claims(load_studies([folder]))[3]
    assert verdict.verdict == "inconclusive"
    assert verdict.reason == "group2/plateau-max-acc has not finished every seed (running)"


def test_report_cli_over_several_folders(tmp_path, capsys):
    lr_momentum = write_lr_momentum(tmp_path / "runs" / "lr_momentum")
    group2 = write_group2(tmp_path / "runs" / "group2")
    assert report.main([str(lr_momentum), str(group2)]) == 0
    report_path = tmp_path / "runs" / "REPORT.md"  # default: the folders' common parent
    assert f"wrote {report_path}" in capsys.readouterr().out
    text = report_path.read_text()
    # 1, 2 confirmed; 3 (a schedule loses to lr_momentum's constant twin), 4, 5 refuted; 6-9 need other studies
    assert "The post's nine claims: 2 confirmed, 3 refuted, 4 inconclusive." in text
    assert "| 1 | Large lr + large momentum trains fastest and stays stable. | **confirmed** |" in text
    assert "## Study: lr_momentum" in text and "## Study: group2" in text
    assert "![val_acc of group2](group2/plots/val_acc.png)" in text  # relative to REPORT.md
    # the pick's row: mean ± std over its two seeds, best epoch beside the final one
    row = next(line for line in text.splitlines() if line.startswith("| lr0.2-m0.9: "))
    assert "| 0, 1 | finished | 90.97 ± 1.41 |" in row  # seeds end at 89.97% and 91.97%
    assert "- **lr0.2-m0.5-seed0**: `unstable`:" in text
    assert "final-epoch val acc" in text and "optimistic" in text  # says which number is which
    for folder in (lr_momentum, group2):
        assert (folder / "summary.md").is_file() and (folder / "plots" / "lr.png").is_file()
    assert json.loads((lr_momentum / "lr0.2-m0.5-seed1" / "diagnosis.json").read_text())["diagnoses"]


def test_report_out_folder_and_duplicate_studies(tmp_path, capsys):
    group2 = write_group2(tmp_path / "a" / "group2")
    assert report.main([str(group2), "--out", str(tmp_path / "out")]) == 0
    assert "../a/group2/plots/val_acc.png" in (tmp_path / "out" / "REPORT.md").read_text()
    again = write_group2(tmp_path / "b" / "group2")
    assert report.main([str(group2), str(again)]) == report.EXIT_NOT_A_GRID
    assert "both hold study group2; pass one folder per study" in capsys.readouterr().err


def test_write_report_on_a_single_study_writes_into_its_parent(tmp_path):
    folder = write_group2(tmp_path / "group2")
    assert write_report([folder]) == tmp_path / "REPORT.md"


def test_runner_writes_diagnosis_json_when_a_run_ends(tmp_path, monkeypatch):
    """The runner's run-end path, with training replaced by a canned outcome (the trainer is tested elsewhere)."""
    swinging = metrics([0.3, 0.45, 0.55] + [0.62 + (0.08 if e % 2 else -0.06) for e in range(17)])
    monkeypatch.setattr(
        "fasttrick.grid.execute.train_run", lambda *args, **kwargs: Outcome(status="finished", rows=swinging)
    )
    grid = load_grid(REPO / "configs" / "smoke.yaml")
    run_grid(grid, tmp_path, only=[grid.runs[0].name], session=Session(log=lambda line: None), summary=False)
    diagnosis = json.loads((tmp_path / grid.runs[0].name / "diagnosis.json").read_text())
    assert [d["mode"] for d in diagnosis["diagnoses"]] == ["unstable"]
