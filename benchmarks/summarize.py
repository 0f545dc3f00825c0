"""Prints the comparison table of a pytest-benchmark JSON file (what the GPU check shows last).

    python benchmarks/summarize.py bench.json [--markdown]

Optimizer steps: median ms, useful GB/s (20 B/param), share of the copy bandwidth measured in the same
run, and the speed-up over torch's fused, foreach and compiled (tensor lr) SGD from the same run. The
machine's load average at the start and end of the run is printed with them. Training steps: images/s and
the speed-up over the plain-PyTorch baseline. Loaders: images/s.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def step_rows(benchmarks: list[dict]) -> list[list[str]]:
    by_set: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in benchmarks:
        info = b["extra_info"]
        if b["group"].startswith("sgd-step"):
            by_set[info["param_set"]][info["impl"]] = b
    rows = []
    for param_set, impls in by_set.items():
        fused = impls.get("torch-fused", {}).get("stats", {}).get("median")
        foreach = impls.get("torch-foreach", {}).get("stats", {}).get("median")
        compiled = impls.get("torch-compiled", {}).get("stats", {}).get("median")
        for impl, b in sorted(impls.items(), key=lambda kv: kv[1]["stats"]["median"]):
            median = b["stats"]["median"]
            info = b["extra_info"]
            rows.append(
                [
                    param_set,
                    impl,
                    f"{median * 1e3:.3f}",
                    f"{info['GBps']:.0f}",
                    f"{info['fraction_of_copy']:.0%}",
                    f"{fused / median:.2f}x" if fused else "-",
                    f"{foreach / median:.2f}x" if foreach else "-",
                    f"{compiled / median:.2f}x" if compiled else "-",
                ]
            )
    return rows


def train_rows(benchmarks: list[dict]) -> list[list[str]]:
    rows = []
    for b in benchmarks:
        if b["group"].startswith("train-step"):
            info = b["extra_info"]
            speedup = info.get("speedup_vs_baseline")
            rows.append(
                [
                    info["impl"],
                    str(info["batch_size"]),
                    f"{b['stats']['median'] * 1e3:.1f}",
                    f"{info['images_per_s']:,}",
                    f"{speedup:.2f}x" if speedup else "-",
                ]
            )
    return rows


def loader_rows(benchmarks: list[dict]) -> list[list[str]]:
    return [[b["name"], f"{b['extra_info']['images_per_s']:,}"] for b in benchmarks if b["group"].startswith("loader")]


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)) for r in [header, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table, for results/summary.md")
    args = parser.parse_args()
    with open(args.json_file) as f:
        data = json.load(f)
    machine = data.get("machine_info", {})
    benchmarks = data["benchmarks"]
    print(f"{machine.get('node', '?')} / {machine.get('cpu', {}).get('brand_raw', '?')} / {data.get('datetime', '?')}")
    if "loadavg_start" in machine:
        print(
            f"load average (1/5/15 min) at start {machine['loadavg_start']}, at end {machine.get('loadavg_end', '?')}"
            f" on {machine.get('cpu_count', '?')} cores"
        )
    steps = step_rows(benchmarks)
    if steps:
        header = [
            "param set",
            "implementation",
            "median ms",
            "GB/s",
            "of copy",
            "vs fused",
            "vs foreach",
            "vs compiled",
        ]
        print(render(header, steps, args.markdown))
    train = train_rows(benchmarks)
    if train:
        print()
        print(render(["train step", "batch", "median ms", "images/s", "vs baseline"], train, args.markdown))
    loaders = loader_rows(benchmarks)
    if loaders:
        print()
        print(render(["loader benchmark", "images/s"], loaders, args.markdown))


if __name__ == "__main__":
    main()
