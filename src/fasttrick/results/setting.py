"""How far the runs are from the post's setting: the differences a report's banner lists.

The post trained the full ResNet-18 on all of CIFAR-10 for 200 epochs; a study's own config (configs/*.yaml)
keeps the model and the data and runs at least the quick profile's epochs. Runs made smaller (`--set
model.width=...`, `data.train_subset`, `data.test_subset`, `--epochs` below the quick profile) or on another
dataset are a different setting: every verdict over them is about that setting, and the report says so first.
The reference values are written here as plain numbers (this package reads YAML and never imports the
pydantic schema); tests/test_report_setting.py ties them to fasttrick.config's defaults and the quick profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runs import read_yaml
from .study import Study, flatten

POST_WIDTH = 1.0  # model.width: ResNet-18's standard 11.17 M parameters
POST_TRAIN_IMAGES, POST_TEST_IMAGES = 50_000, 10_000  # CIFAR-10's splits, all of them
POST_DATASET = "cifar10"
QUICK_EPOCHS = 30  # the quick profile's train.epochs, unless a study's own config sets another
# Where a study's own config is looked for when grid.yaml's `source` is not readable (a copied folder).
CONFIG_DIRS = (Path("configs"), Path(__file__).resolve().parents[3] / "configs")


def differences(study: Study) -> list[str]:
    """Each way the study's runs differ from the post's setting, as a phrase; [] when they do not."""
    values: dict[str, set[Any]] = {}
    for group in study.groups:
        for key in ("model.width", "data.train_subset", "data.test_subset", "train.epochs", "data.dataset"):
            values.setdefault(key, set()).add(group.config.get(key))
    found = []
    widths = sorted(w for w in values["model.width"] if w is not None and w != POST_WIDTH)
    if widths:
        found.append(f"model width {_join(widths)} (the post: {POST_WIDTH})")
    for key, split, full in (("train_subset", "train", POST_TRAIN_IMAGES), ("test_subset", "test", POST_TEST_IMAGES)):
        subsets = sorted(n for n in values[f"data.{key}"] if n is not None and n < full)
        if subsets:
            found.append(f"data.{key} {_join(subsets)} of CIFAR-10's {full} {split} images")
    quick = own_quick_epochs(study)
    short = sorted(e for e in values["train.epochs"] if e is not None and e < quick)
    if short:
        found.append(f"{_join(short)} epochs, below the quick profile's {quick} (the post: 200)")
    datasets = sorted(str(d) for d in values["data.dataset"] if d is not None and d != POST_DATASET)
    if datasets:
        found.append(f"dataset {_join(datasets)} (the post: CIFAR-10)")
    overrides = [str(o) for o in study.grid.get("overrides") or []]
    if found and overrides:
        found.append("command-line overrides: " + ", ".join(f"`--set {o}`" for o in overrides))
    sweeps = [str(o) for o in study.grid.get("sweeps") or []]
    if found and sweeps:
        found.append("command-line sweeps: " + ", ".join(f"`--sweep {o}`" for o in sweeps))
    return found


def own_quick_epochs(study: Study) -> int:
    """The quick profile's epochs in the study's own config (its profiles.quick, else its base), else 30."""
    config = _own_config(study)
    for layer in ((config.get("profiles") or {}).get("quick"), config.get("base")):
        epochs = flatten(layer).get("train.epochs") if isinstance(layer, dict) else None
        if isinstance(epochs, int):
            return epochs
    return QUICK_EPOCHS


def _own_config(study: Study) -> dict[str, Any]:
    """The study's YAML: grid.yaml's `source`, else configs/<name>.yaml here or in the source tree; {} if none."""
    candidates = [Path(str(study.grid["source"]))] if study.grid.get("source") else []
    candidates += [folder / f"{study.name}.yaml" for folder in CONFIG_DIRS]
    for path in candidates:
        document = read_yaml(path) if path.is_file() else None
        if isinstance(document, dict):
            return document
    return {}


def _join(values: list[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
