"""A report over runs that are not the post's setting says so first: a scaled-down run (width 0.125,
8192/2048 images, 6 epochs) as synthetic folders, and the reference values tied to the config schema."""

from __future__ import annotations

import yaml

from fasttrick.results import setting
from fasttrick.results.report import write_report
from fasttrick.results.study import load_studies

from results_helpers import config, curve, metrics, sgd, write_lr_momentum, write_study

SCALED = {
    "model": {"name": "resnet18", "width": 0.125},
    "data": {"batch_size": 512, "train_subset": 8192, "test_subset": 2048},
}
OVERRIDES = ["model.width=0.125", "data.train_subset=8192", "data.test_subset=2048"]


def scaled_down(folder, name: str, runs: dict) -> None:
    """Rewrite a study's configs and grid.yaml as `--set ... --epochs 6` leaves them."""
    for run_name in runs:
        path = folder / run_name / "config.yaml"
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **SCALED}))
    document = {"name": name, "profile": "quick", "overrides": OVERRIDES, "runs": [{"name": r} for r in runs]}
    (folder / "grid.yaml").write_text(yaml.safe_dump(document))


def test_the_reference_values_are_the_schemas_defaults_and_the_quick_profile():
    from fasttrick.config import PROFILE_DEFAULTS, DataConfig
    from fasttrick.config.schema import ModelConfig

    assert ModelConfig().width == setting.POST_WIDTH
    assert DataConfig().train_subset is None and DataConfig().test_subset is None
    assert PROFILE_DEFAULTS["quick"]["train.epochs"] == setting.QUICK_EPOCHS


def test_a_scaled_down_run_opens_with_a_banner_and_takes_no_unfounded_verdict(tmp_path):
    lr_momentum = write_lr_momentum(tmp_path / "lr_momentum", epochs=6)
    scaled_down(lr_momentum, "lr_momentum", [p.name for p in lr_momentum.iterdir() if p.is_dir()])
    cosine = {"name": "cosine", "eta_min": 2e-3}
    l2_runs = {
        f"wd{wd}-seed0": (config(0, sgd(weight_decay=wd), cosine, 6), metrics(curve(0.6, n=6)))
        for wd in (0, 5e-5, 5e-4, 5e-3, 1e-2)
    }
    l2_runs["wd0.05-seed0"] = (config(0, sgd(weight_decay=5e-2), cosine, 6), metrics([0.1, 0.11, 0.1, 0.12, 0.1, 0.1]))
    l2 = write_study(tmp_path / "l2", "l2", l2_runs)
    scaled_down(l2, "l2", l2_runs)
    text = write_report([lr_momentum, l2]).read_text()
    banner = text.split("Studies:")[0]
    assert "**Not the post's setting.**" in banner
    for phrase in ("model width 0.125", "data.train_subset 8192", "data.test_subset 2048", "6 epochs, below"):
        assert phrase in banner
    assert "`--set model.width=0.125`" in banner
    assert "Every verdict below is about this setting, not about the post's." in banner
    verdicts = {
        int(line.split("|")[1]): line.split("|")[3].strip()
        for line in text.splitlines()
        if line[:4] in {f"| {n} " for n in range(1, 10)}
    }
    # claim 2 needs `unstable`, claim 7 `overfitting`: neither can be judged on 6 epochs
    assert verdicts[2] == verdicts[7] == "**inconclusive** (this setting)"
    assert all(v.endswith("(this setting)") for v in verdicts.values())
    assert "not judged (too short to tell, not healthy)" in text


def test_a_study_in_its_own_setting_has_no_banner(tmp_path):
    studies = load_studies([write_lr_momentum(tmp_path / "lr_momentum")])
    assert setting.differences(studies["lr_momentum"]) == []
    assert "Not the post's setting" not in write_report([tmp_path / "lr_momentum"]).read_text()


def test_a_study_config_that_sets_its_own_quick_epochs_is_the_reference(tmp_path):
    """group2's quick profile is 20 epochs (its YAML): 20-epoch runs are its own setting, 10 are not."""
    source = tmp_path / "group2.yaml"
    source.write_text(yaml.safe_dump({"name": "group2", "profiles": {"quick": {"train.epochs": 20}}}))
    for epochs, expected in ((20, []), (10, ["10 epochs, below the quick profile's 20 (the post: 200)"])):
        folder = tmp_path / f"e{epochs}"
        run = {"cosine-seed0": (config(0, sgd(), {"name": "cosine"}, epochs), metrics(curve(0.9, n=epochs)))}
        write_study(folder, "group2", run)
        (folder / "grid.yaml").write_text(
            yaml.safe_dump({"name": "group2", "source": str(source), "runs": ["cosine-seed0"]})
        )
        assert setting.differences(load_studies([folder])["group2"]) == expected
