"""Limits checked before anything is written or trained: run names against the filesystem of --out,
and a run's model width and batch against its device's memory (a lower bound, tied here to the model)."""

from __future__ import annotations

import os

import pytest
import torch

from fasttrick.config import ConfigError
from fasttrick.grid import expand_grid, limits, memory
from fasttrick.grid.memory import CONV_OUTPUTS_PER_IMAGE, PARAMETERS_AT_WIDTH_1, DoesNotFit, least_bytes
from fasttrick.models import resnet18
from fasttrick.train import main

GRID = "base:\n  train: {epochs: 1, device: cpu}\n  optimizer: {name: fused_sgdw}\nruns:\n  - {name: %s}\n"


@pytest.mark.parametrize("width", [0.5, 1.0, 1.5])
def test_the_lower_bound_is_below_the_model(width):
    model = resnet18(width=width)
    assert PARAMETERS_AT_WIDTH_1 * width**2 <= sum(p.numel() for p in model.parameters())
    conv_outputs = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda m, i, o: conv_outputs.append(o.numel()))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert CONV_OUTPUTS_PER_IMAGE * width <= sum(conv_outputs) * 1.01  # channels round to whole numbers


def fake_memory(total: int):
    return lambda device: (total, "cuda" if device != "cpu" else "cpu", f"a {total >> 30} GiB device")


def test_width_and_batch_are_checked_against_the_device():
    default = expand_grid({})
    memory.check_sizes(default.runs, fake_memory(8 << 30))  # the standard run fits 8 GiB
    assert least_bytes(default.runs[0], "cuda") < least_bytes(default.runs[0], "cpu")  # bf16 activations
    with pytest.raises(DoesNotFit, match=r"model.width 64: 45,056 M parameters.*lower model.width"):
        memory.check_sizes(expand_grid({"base": {"model": {"width": 64}}}).runs, fake_memory(141 << 30))
    huge_batch = expand_grid({"base": {"data": {"batch_size": 50_000}, "model": {"width": 4}}}).runs
    with pytest.raises(DoesNotFit, match=r"data.batch_size 50000\), more than the 16.00 GiB of a 16 GiB device"):
        memory.check_sizes(huge_batch, fake_memory(16 << 30))


def test_cpu_workers_share_the_machines_memory():
    runs = expand_grid({"seeds": [0, 1, 2, 3], "base": {"train": {"device": "cpu"}}}).runs
    one = least_bytes(runs[0], "cpu")
    memory.check_sizes(runs, fake_memory(2 * one), cpu_workers=2)
    with pytest.raises(DoesNotFit, match=r"with --workers 3, 3 such runs at once.*or --workers"):
        memory.check_sizes(runs, fake_memory(2 * one), cpu_workers=3)
    memory.check_sizes(runs[:2], fake_memory(2 * one), cpu_workers=3)  # no more at once than there are runs


def test_the_cli_refuses_a_model_no_device_holds(tmp_path, capsys):
    config = tmp_path / "g.yaml"
    config.write_text(GRID % "w")
    out = tmp_path / "out"
    assert main(["--config", str(config), "--out", str(out), "--set", "model.width=64", "--dry-run"]) == 2
    assert "lower model.width" in capsys.readouterr().err
    assert main(["--config", str(config), "--out", str(out), "--set", "model.width=64"]) == 2
    assert "lower model.width" in capsys.readouterr().err
    assert not out.exists()


def test_run_names_are_checked_against_the_filesystem(tmp_path, capsys):
    config = tmp_path / "g.yaml"
    config.write_text(GRID % ("x" * 300))
    out = tmp_path / "out"
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert main(["--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is 306 characters" in err and f"allows {name_max} for a run folder" in err and "shorter name" in err
    assert not out.exists()


def test_the_name_limit_is_the_filesystems(tmp_path, monkeypatch):
    monkeypatch.setattr(limits.os, "pathconf", lambda path, name: {"PC_NAME_MAX": 20, "PC_PATH_MAX": 4096}[name])
    fits = expand_grid({"runs": [{"name": "a" * 14}]}).runs  # "-seed0" makes 20
    limits.check_run_names(fits, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"is 21 characters.*allows 20"):
        limits.check_run_names(expand_grid({"runs": [{"name": "a" * 15}]}).runs, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"--out .*folder name 'bbbbbbbbbbbbbbbbbbbbb'... is 21 bytes"):
        limits.check_run_names(fits, tmp_path / ("b" * 21) / "out")
    monkeypatch.setattr(limits.os, "pathconf", lambda path, name: {"PC_NAME_MAX": 255, "PC_PATH_MAX": 100}[name])
    with pytest.raises(ConfigError, match="too deep"):
        limits.check_run_names(fits, tmp_path / ("c" * 60))


def test_device_memory_reads_the_gpu_a_run_names(monkeypatch):
    asked = []

    class Properties:
        total_memory = 141 << 30
        name = "NVIDIA H200"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: asked.append(index) or Properties)
    assert memory.device_memory("auto") == (141 << 30, "cuda", "GPU 0 (NVIDIA H200)")
    assert memory.device_memory("cuda:1")[2] == "GPU 1 (NVIDIA H200)"
    assert memory.device_memory("cuda")[1] == "cuda"
    assert asked == [0, 1, 0]
    total, kind, _ = memory.device_memory("cpu")
    assert kind == "cpu" and total == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
