"""Grid results: run_result on hand-made histories, and write_summary / the plots on synthetic run
folders laid out as the trainer writes them (no training here)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from fasttrick.results import plots
from fasttrick.results.result import RESULT_KEYS, run_result
from fasttrick.results.runs import NotAGridFolder, read_grid
from fasttrick.results.summary import write_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def history(val_accs: list[float], *, images_per_s: list[float] | None = None, **columns: list[float]) -> list[dict]:
    """Metrics rows as metrics.jsonl holds them: epoch e ends at 10*e seconds unless said otherwise."""
    epochs = range(1, len(val_accs) + 1)
    rows = []
    for i, epoch in enumerate(epochs):
        row = {
            "epoch": epoch,
            "train_loss": 2.0 / epoch,
            "train_acc": val_accs[i],
            "val_loss": 1.5 / epoch,
            "val_acc": val_accs[i],
            "lr": 0.1 * 0.5 ** (epoch - 1),
            "epoch_seconds": 10.0,
            "images_per_s": images_per_s[i] if images_per_s else 5000.0,
            "elapsed_seconds": 10.0 * epoch,
        }
        row.update({key: values[i] for key, values in columns.items()})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------- run_result


def test_run_result_full_history():
    metrics = history([0.5, 0.85, 0.91, 0.935, 0.93], images_per_s=[1000.0, 4000.0, 5000.0, 6000.0, 5000.0])
    result = run_result(metrics, "finished")
    assert list(result) == list(RESULT_KEYS)
    assert result == {
        "best_val_acc": 0.935,
        "best_epoch": 4,
        "final_val_acc": 0.93,
        "epochs": 5,
        "epochs_to_90": 3,
        "seconds_to_90": 30.0,
        "epochs_to_93": 4,
        "seconds_to_93": 40.0,
        "images_per_s": 5000.0,  # epoch 1 (compile) left out of the mean
        "wall_seconds": 50.0,
        "status": "finished",
    }


def test_run_result_milestone_is_inclusive_and_best_epoch_is_the_first_of_a_tie():
    result = run_result(history([0.90, 0.93, 0.93]), "finished")
    assert (result["epochs_to_90"], result["epochs_to_93"]) == (1, 2)
    assert (result["best_val_acc"], result["best_epoch"]) == (0.93, 2)


def test_run_result_empty_history():
    result = run_result([], "pending")
    assert result == {key: None for key in RESULT_KEYS} | {"epochs": 0, "status": "pending"}


def test_run_result_one_epoch_keeps_its_throughput():
    result = run_result(history([0.4], images_per_s=[1234.0]), "running")
    assert result["images_per_s"] == 1234.0
    assert (result["best_epoch"], result["epochs"], result["wall_seconds"]) == (1, 1, 10.0)


def test_run_result_never_reaching_the_milestones():
    result = run_result(history([0.1, 0.5, 0.89]), "finished")
    assert result["best_val_acc"] == 0.89
    assert all(result[key] is None for key in ("epochs_to_90", "seconds_to_90", "epochs_to_93", "seconds_to_93"))


def test_run_result_diverged_history_is_strict_json():
    nan, inf = math.nan, math.inf
    metrics = history(
        [0.3, 0.45, nan, 0.1],
        train_loss=[2.0, 1e4, nan, inf],
        images_per_s=[1000.0, 3000.0, inf, 5000.0],
    )
    result = run_result(metrics, "diverged")
    assert (result["best_val_acc"], result["best_epoch"]) == (0.45, 2)
    assert result["final_val_acc"] == 0.1
    assert result["images_per_s"] == 4000.0  # the inf epoch counts as missing
    assert result["status"] == "diverged"
    json.dumps(result, allow_nan=False)  # no NaN/inf leaks into result.json

    all_nan = run_result(history([nan, nan]), "diverged")
    assert all_nan["best_val_acc"] is None and all_nan["final_val_acc"] is None and all_nan["epochs"] == 2


# ------------------------------------------------------------------------------- synthetic grid folder


def write_run(grid_dir: Path, name: str, metrics: list[dict], status: str, message: str | None = None) -> None:
    run_dir = grid_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": name}))
    # json.dumps writes NaN/Infinity for non-finite floats, as the trainer's json.dumps does.
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    epoch = metrics[-1]["epoch"] if metrics else 0
    (run_dir / "status.json").write_text(json.dumps({"status": status, "epoch": epoch, "message": message}))


def write_synthetic_grid(grid_dir: Path) -> Path:
    """Three runs as a grid leaves them mid-way: one finished, one diverged, one still running; plus a
    pending run with no metrics yet. grid.yaml lists them in an order that is not alphabetical."""
    nan = math.nan
    runs = ["sgd_cosine", "sgd_large_lr", "adam_step", "nadam"]
    grid_dir.mkdir(parents=True, exist_ok=True)
    (grid_dir / "grid.yaml").write_text(yaml.safe_dump([{"name": name} for name in runs]))
    write_run(
        grid_dir,
        "sgd_cosine",
        history([0.6, 0.85, 0.91, 0.94, 0.935], images_per_s=[800.0, 3000.0, 3000.0, 3000.0, 3000.0]),
        "finished",
    )
    write_run(
        grid_dir,
        "sgd_large_lr",
        history([0.3, 0.2, nan], train_loss=[2.2, 40.0, nan]),
        "diverged",
        message="train loss is nan at epoch 3",
    )
    write_run(grid_dir, "adam_step", history([0.5, 0.7]), "running")
    (grid_dir / "nadam").mkdir()
    (grid_dir / "nadam" / "config.yaml").write_text(yaml.safe_dump({"name": "nadam"}))
    return grid_dir


@pytest.fixture(scope="module")
def summarised_grid(tmp_path_factory) -> Path:
    grid_dir = write_synthetic_grid(tmp_path_factory.mktemp("grid") / "group2")
    assert write_summary(grid_dir) == grid_dir / "summary.md"
    return grid_dir


def test_read_grid_keeps_the_grid_order_and_statuses(summarised_grid):
    runs = read_grid(summarised_grid)
    assert [(run.name, run.status) for run in runs] == [
        ("sgd_cosine", "finished"),
        ("sgd_large_lr", "diverged"),
        ("adam_step", "running"),
        ("nadam", "pending"),
    ]


def test_summary_csv_has_every_run_and_the_right_numbers(summarised_grid):
    with open(summarised_grid / "summary.csv", newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["sgd_cosine", "sgd_large_lr", "adam_step", "nadam"]
    cosine = rows["sgd_cosine"]
    assert float(cosine["best_val_acc"]) == 0.94 and cosine["best_epoch"] == "4"
    assert float(cosine["final_val_acc"]) == 0.935
    assert (cosine["epochs_to_90"], cosine["seconds_to_90"], cosine["epochs_to_93"]) == ("3", "30.0", "4")
    assert float(cosine["images_per_s"]) == 3000.0 and float(cosine["wall_seconds"]) == 50.0
    diverged = rows["sgd_large_lr"]
    assert (diverged["status"], diverged["final_val_acc"], diverged["best_epoch"]) == ("diverged", "", "1")
    assert (diverged["diagnoses"], cosine["diagnoses"]) == ("diverged", "")
    assert rows["nadam"]["status"] == "pending" and rows["nadam"]["epochs"] == "0"


def test_summary_markdown_table(summarised_grid):
    text = (summarised_grid / "summary.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header, *body = (line.strip("| ").split(" | ") for line in table)
    cells = [dict(zip(header, row, strict=True)) for row in body]
    assert [row["run"] for row in cells] == ["sgd_cosine", "sgd_large_lr", "adam_step", "nadam"]
    assert cells[0] == {
        "run": "sgd_cosine",
        "status": "finished",
        "epochs": "5",
        "best val acc (%)": "94.00",
        "epoch of best": "4",
        "final val acc (%)": "93.50",
        "epochs to 90%": "3",
        "time to 90%": "30.0 s",
        "epochs to 93%": "4",
        "time to 93%": "40.0 s",
        "images/s": "3,000",
        "wall time": "50.0 s",
        "diagnoses": "-",
    }
    assert cells[1]["status"] == "diverged (epoch 3)" and cells[1]["final val acc (%)"] == "-"
    assert cells[1]["diagnoses"] == "diverged"
    assert (
        "- **sgd_large_lr**: `diverged`: train loss 40 at epoch 2, above 4.61 (2 ln 10, Thresholds.diverged_loss)"
        in text
    )
    assert cells[2]["status"] == "running (epoch 2)"
    assert cells[3]["status"] == "pending" and cells[3]["best val acc (%)"] == "-"
    assert (
        "Best (of the runs that did not diverge): **sgd_cosine**, 94.00% validation accuracy at epoch 4 of 5." in text
    )
    assert "sgd_large_lr (diverged): train loss is nan at epoch 3" in text
    assert "final val acc" in text and "the last finished epoch's" in text  # says which number is which


@pytest.mark.parametrize("name", ["val_acc", "train_loss", "lr"])
def test_plots_are_valid_pngs(summarised_grid, name):
    png = (summarised_grid / "plots" / f"{name}.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 10_000  # axes, three curves and a legend; an empty 840x540 canvas is ~3 kB


def test_each_run_with_metrics_gets_its_diagnosis_json(summarised_grid):
    diverged = json.loads((summarised_grid / "sgd_large_lr" / "diagnosis.json").read_text())
    assert [d["mode"] for d in diverged["diagnoses"]] == ["diverged"]
    assert diverged["diagnoses"][0]["evidence"] == {
        "epoch": 2,
        "metric": "train_loss",
        "value": 40.0,
        "status": "diverged",
    }
    assert diverged["thresholds"]["chance_acc"] == 0.1
    assert json.loads((summarised_grid / "sgd_cosine" / "diagnosis.json").read_text())["diagnoses"] == []
    assert not (summarised_grid / "nadam" / "diagnosis.json").exists()  # pending: nothing to diagnose


def test_no_temporary_files_left_behind(summarised_grid):
    leftovers = [p.name for p in summarised_grid.rglob("*.tmp")]
    assert leftovers == []


def test_figures_overlay_one_line_per_run_and_mark_the_divergence(summarised_grid):
    curves = {run.label: run.metrics for run in read_grid(summarised_grid)}
    expected = ["sgd_cosine", "sgd_large_lr (diverged)", "adam_step (running)"]  # nadam has nothing to draw
    for name, make_figure in plots.FIGURES.items():
        (ax,) = make_figure(curves).axes
        labelled = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert labelled == expected, name
        assert [text.get_text() for text in ax.get_legend().get_texts()] == expected, name
    (ax,) = plots.train_loss_figure(curves).axes
    dotted = [line for line in ax.get_lines() if line.get_label() == "_nolegend_"]
    assert len(dotted) == 1 and dotted[0].get_xdata()[0] == 3  # the epoch the loss went NaN
    assert ax.get_ylim()[1] <= plots.LOSS_CEILING  # the diverging run's loss of 40 does not set the range
    (ax,) = plots.lr_figure(curves, "group2").axes
    assert ax.get_yscale() == "log" and ax.get_title() == "Learning rate: group2"


def test_rewriting_picks_up_new_epochs(tmp_path):
    grid_dir = write_synthetic_grid(tmp_path / "grid")
    write_summary(grid_dir)
    with open(grid_dir / "adam_step" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(history([0.5, 0.7, 0.92])[-1]) + "\n")
        f.write('{"epoch": 4, "val_a')  # killed mid-append: the summary skips the line and says so
    with pytest.warns(UserWarning, match="metrics.jsonl:4: skipped"):
        write_summary(grid_dir)
    with open(grid_dir / "summary.csv", newline="") as f:
        adam = next(row for row in csv.DictReader(f) if row["run"] == "adam_step")
    assert (adam["epochs"], adam["epochs_to_90"]) == ("3", "3")


def test_not_a_grid_folder(tmp_path):
    with pytest.raises(NotAGridFolder, match=r"no grid\.yaml"):
        write_summary(tmp_path)
    (tmp_path / "grid.yaml").write_text("[]\n")
    with pytest.raises(NotAGridFolder, match="no run folders"):
        write_summary(tmp_path)
    run_dir = tmp_path / "run_a"
    run_dir.mkdir()
    (run_dir / "status.json").write_text('{"status": "pending", "epoch": 0, "message": null}')
    with pytest.raises(NotAGridFolder, match="looks like a run folder"):
        write_summary(run_dir)
    assert not (tmp_path / "summary.md").exists()


def test_unreadable_grid_file_lists_runs_by_name(tmp_path):
    grid_dir = write_synthetic_grid(tmp_path / "grid")
    (grid_dir / "grid.yaml").write_text("runs: [unclosed\n")
    with pytest.warns(UserWarning, match="grid.yaml: unreadable"):
        names = [run.name for run in read_grid(grid_dir)]
    assert names == ["adam_step", "nadam", "sgd_cosine", "sgd_large_lr"]
