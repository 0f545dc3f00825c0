"""Built-in studies by name: `--config group1`, `--list`, and an unknown name answered with the list."""

from __future__ import annotations

from pathlib import Path

import pytest

from fasttrick import studies
from fasttrick.train import main

ROOT_CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_every_config_of_the_checkout_is_a_built_in_study_with_its_one_line():
    found = studies.builtin()
    assert sorted(found) == ROOT_CONFIGS and "group1" in found
    for name, path in found.items():
        line = studies.summary(path)
        assert line and "\n" not in line and len(line) <= 110, name
    assert studies.summary(found["l2"]).startswith("Study 3: L2 regularisation")


def test_list_prints_one_line_per_study(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(ROOT_CONFIGS)
    assert [line.split()[0] for line in lines[1:]] == ROOT_CONFIGS


def test_a_name_and_the_checkout_path_find_the_study_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: configs/group1.yaml is no file here
    assert studies.resolve("group1") == studies.builtin()["group1"]
    assert studies.resolve("configs/group1.yaml") == studies.builtin()["group1"]
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\n")
    assert studies.resolve(str(own)) == own  # a file wins, as before


def test_an_unknown_name_exits_2_and_lists_the_studies(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "group7", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "group7" in err and "no built-in study" in err
    assert all(name in err for name in ROOT_CONFIGS)
    with pytest.raises(studies.UnknownStudy):
        studies.resolve("elsewhere/group1.yaml")  # only the checkout's configs/ path maps to a built-in study


def test_dry_run_of_a_study_by_name_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "smoke", "--dry-run"]) == 0
    assert "smoke" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
