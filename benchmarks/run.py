"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/results/<date>.{json,md,png}``.

Each benchmark module exposes ``run(quick: bool = False) -> dict`` returning
``{"title": str, "rows": list[dict], "notes": str}`` and optionally ``"plot": {"label": str,
"values": {name: number}}`` for the bar chart. ``rows`` become a markdown table. The report opens
with a summary of the performance measurements against their targets (:mod:`targets`) and the load
average of the machine at the start and the end of every benchmark.

Usage: ``python benchmarks/run.py [--quick] [--only NAME ...] [--threads N] [--out DIR]``;
``--render results/<date>.json`` rewrites that run's markdown and plot (e.g. after changing the
report) without running anything. On a machine shared with other jobs, ``--threads 1``: torch's
OpenMP threads wait for each other at every op, and one that is descheduled stalls them all (on
2 busy cores a training step took 5x longer on 2 threads than on 1). The quickstart's subprocess
keeps torch's default, as ``make train`` does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import sys
import textwrap
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from targets import images_per_second, summarize

HERE = Path(__file__).resolve().parent


def hardware() -> dict[str, Any]:
    """CPU model, cores, torch version and GPU (if any) of this machine."""
    import torch

    from bnn_lightning.precision import cpu_bf16

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_bf16(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1m": load_average(),
    }


def _yes(flag: bool | None, no: str) -> str:
    return "?" if flag is None else "yes" if flag else f"no ({no})"


def load_average() -> float | None:
    """The 1-minute load average (runnable processes; compare with the core count)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def discover(only: list[str] | None) -> list[tuple[str, ModuleType]]:
    """Import ``bench_*.py`` modules in name order, filtered by ``only``."""
    modules = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append((name, module))
    return modules


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown report, one table per benchmark."""
    hw = results["hardware"]
    bf16 = _yes(hw.get("native_bf16"), "precision: auto trains in fp32")
    kept = _yes(hw.get("keep_cpu_memory"), "glibc's defaults")
    lines = [
        f"# Benchmarks {results['date']}" + (" (--quick)" if results["quick"] else ""),
        "",
        f"CPU: {hw['cpu']} ({hw['cores']} cores, {hw['torch_threads']} torch threads, "
        f"{hw.get('cpu_capability', '?')}, native bf16: {bf16}); "
        f"GPU: {hw['gpu'] or 'none'}; torch {hw['torch']}, Python {hw['python']}; "
        f"freed CPU memory kept (as the bnn CLI on the CPU): {kept}. "
        f"Load average (1 min) {hw['load_avg_1m']} at the start, {results['load_avg_end']} at "
        f"the end: more than {hw['cores']} means other processes competed for the cores.",
        "",
        *summary_table(results["summary"]),
    ]
    for name, result in results["benchmarks"].items():
        lines += [f"## {result.get('title', name)}", ""]
        if "error" in result:
            lines += ["```", result["error"].rstrip(), "```", ""]
            continue
        rows = result.get("rows", [])
        if rows:
            header = list(dict.fromkeys(k for row in rows for k in row))
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            for row in rows:
                lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in header) + " |")
            lines.append("")
        if result.get("notes"):
            lines += [result["notes"], ""]
        load = f"load average {result.get('load_start')} -> {result.get('load_end')}"
        lines.append(f"_{result.get('seconds', 0):.0f} s to run, {load}._")
        lines.append("")
    return "\n".join(lines)


def summary_table(summary: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the summary: item, measure, value, fastest repeats, target, met."""
    met = {True: "yes", False: "**no**", None: "—"}
    lines = [
        "## Summary",
        "",
        "| # | measure | value | fastest repeats | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for entry in summary:
        cells = [entry["item"], entry["measure"], entry["value"], entry.get("best", "—")]
        lines.append("| " + " | ".join([*cells, entry["target"], met[entry["met"]]]) + " |")
    note = (
        "Timing ratios: *value* from the medians, *fastest repeats* from the fastest repeat of "
        "each side (the least disturbed by other processes); *met* judges the value."
    )
    return [*lines, "", note, ""]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot(results: dict[str, Any], path: Path) -> bool:
    """Bar charts of each benchmark's ``plot`` values into one PNG; False when there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (r.get("title", n), r["plot"]) for n, r in results["benchmarks"].items() if r.get("plot")
    ]
    speed = images_per_second(results)
    if speed:
        title = "ResNet-18 training step (CIFAR stem, width 64): images/s per setting"
        panels.insert(0, (title, {"label": "images/s", "values": speed}))
    if not panels:
        return False
    heights = [1.2 + 0.35 * len(panel["values"]) for _, panel in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(11, sum(heights) + 1), squeeze=False, height_ratios=heights
    )
    for ax, (title, panel) in zip(axes[:, 0], panels, strict=True):
        labels, values = zip(*panel["values"].items(), strict=True)
        colors = ["tab:gray" if "float" in label else "tab:blue" for label in labels]
        ax.barh(labels, values, color=colors)
        ax.set_title(textwrap.fill(title, 80), fontsize=10, loc="left")
        ax.set_xlabel(panel.get("label", ""))
        if " / " in panel.get("label", ""):  # a ratio: mark parity
            ax.axvline(1.0, color="k", linewidth=1, linestyle="--")
        ax.invert_yaxis()
    hw = results["hardware"]
    fig.suptitle(
        f"{results['date']} · {hw['cpu']} · {hw['cores']} cores · torch {hw['torch']} · "
        f"load {hw['load_avg_1m']} -> {results.get('load_avg_end')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_all(only: list[str] | None, quick: bool, kept: bool = False) -> dict[str, Any]:
    """Run the benchmarks in name order; a failing one is reported, the others still run.
    ``kept``: whether :func:`bnn_lightning.cpu_memory.keep_freed_memory` was applied."""
    results: dict[str, Any] = {
        "date": dt.datetime.now().strftime("%Y-%m-%d_%H%M"),
        "hardware": {**hardware(), "keep_cpu_memory": kept},
        "quick": quick,
        "benchmarks": {},
    }
    for name, module in discover(only):
        print(f"[bench] {name} ...", flush=True)
        load_start, start = load_average(), time.perf_counter()
        try:
            result = module.run(quick=quick)
        except Exception:
            result = {"title": name, "error": traceback.format_exc()}
        result["seconds"] = time.perf_counter() - start
        result["load_start"], result["load_end"] = load_start, load_average()
        results["benchmarks"][name] = result
        print(f"[bench] {name} done in {result['seconds']:.0f} s", flush=True)
    results["load_avg_end"] = load_average()
    return results


def write(results: dict[str, Any], stem: Path) -> None:
    """``<stem>.json`` / ``.md`` / ``.png`` of ``results``, the summary computed afresh."""
    results["summary"] = summarize(results)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown(results))
    wrote_png = plot(results, stem.with_suffix(".png"))
    print(f"[bench] wrote {stem}.json, {stem}.md" + (f", {stem}.png" if wrote_png else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    parser.add_argument("--only", nargs="+", help="benchmark names (bench_<name>.py) to run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--threads", type=int, help="torch threads for the in-process benchmarks (default: torch's)"
    )
    parser.add_argument(
        "--keep-cpu-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="glibc keeps freed memory, as the bnn CLI does on the CPU (bnn_lightning.cpu_memory)",
    )
    parser.add_argument(
        "--render", type=Path, help="rewrite the report of an existing results .json, no runs"
    )
    args = parser.parse_args(argv)
    if args.render:
        write(json.loads(args.render.read_text()), args.render.with_suffix(""))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from bnn_lightning.cpu_memory import keep_freed_memory

    kept = args.keep_cpu_memory and keep_freed_memory()
    sys.path.insert(0, str(HERE))
    results = run_all(args.only, args.quick, kept)
    write(results, args.out / results["date"])
    return 1 if any("error" in r for r in results["benchmarks"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
