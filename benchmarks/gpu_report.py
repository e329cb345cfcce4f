"""The report of ``gpu_check.py``: JUnit parsing, the real run's epoch estimate, markdown + JSON."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

FALLBACK_EPOCHS = 30  # when the speed could not be measured; trainer.max_time still stops it
MET = {True: "yes", False: "**no**", None: "—"}


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts, failures (name and first line) and distinct skip reasons of a JUnit XML file."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, f"no testsuite in {path}"
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failures, skips = [], set()
    for case in suite.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                first = (node.get("message") or "").strip().splitlines()[:1]
                failures.append(f"{name}: {first[0] if first else tag}")
        for node in case.findall("skipped"):
            skips.add(node.get("message") or "")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "passed": passed, "failed": failures, "skip_reasons": sorted(skips)}


def parse_pytest_output(text: str) -> dict[str, Any]:
    """What ``pytest -v`` printed before it was stopped: counts and the failed tests."""
    found = re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", text, flags=re.MULTILINE)
    status = [s for _, s in found]
    failed = [f"{name}: {s.lower()}" for name, s in found if s in ("FAILED", "ERROR")]
    return {
        "tests": len(found), "passed": status.count("PASSED"), "skipped": status.count("SKIPPED"),
        "failures": status.count("FAILED"), "errors": status.count("ERROR"), "failed": failed,
        "skip_reasons": [], "incomplete": True,
    }  # fmt: skip


def _get(results: dict[str, Any], *keys: str) -> Any:
    value: Any = results
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def estimate_epochs(results: dict[str, Any], train_s: float) -> int:
    """Epochs of the real run that fit in ``train_s`` seconds, from the measured speeds.

    Each epoch's batches pass through the data path, then the eager binary training step (one
    after the other: the loop waits for its batch); validation runs forward only, about 3x the
    training step's rate. 10% is kept for the loop's own work.
    """
    step = _get(results, "throughput", "eager", "binary", "images_per_s")
    data = _get(results, "data", "images_per_s")
    train_images, val_images = (
        _get(results, "data", "train_images"),
        _get(results, "data", "val_images"),
    )
    if not (step and data and train_images):
        return FALLBACK_EPOCHS
    epoch_s = train_images * (1 / step + 1 / data) + (val_images or 0) / (3 * step)
    return max(1, int(0.9 * train_s / epoch_s))


def summary(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(measure, value, target, met) for the issue's four targets; ``met`` None on a dry run."""
    judge = not results["dry_run"]
    tests = results["tests"]
    passed = tests.get("passed", 0)
    failed = len(tests.get("failed", []))
    tests_ok = tests["status"] == "ok" and failed == 0 and passed > 0
    lines = [
        (
            "pytest -m gpu",
            f"{passed} passed, {failed} failed, {tests.get('skipped', 0)} skipped "
            f"({tests['status']})",
            "all pass",
            tests_ok if judge else None,
        )
    ]
    compiled = _get(results, "throughput", "compiled", "binary_over_float_time")
    eager = _get(results, "throughput", "eager", "binary_over_float_time")
    value = "not measured" if compiled is None else f"{compiled:.2f}x"
    value += "" if eager is None else f" (eager {eager:.2f}x)"
    ok = (compiled is not None and compiled <= 1.10) if judge else None
    lines.append(("binary / float training-step time, compiled", value, "at most 1.10x", ok))
    data = _get(results, "data", "images_per_s")
    steps = [
        _get(results, "throughput", m, "binary", "images_per_s") for m in ("eager", "compiled")
    ]
    fastest = max((s for s in steps if s), default=None)
    if data and fastest:
        value, ratio = (
            f"{data / fastest:.1f}x ({data:.0f} vs {fastest:.0f} images/s)",
            data / fastest,
        )
    else:
        value, ratio = "not measured", None
    ok = (ratio is not None and ratio >= 2.0) if judge else None
    lines.append(("data path / fastest binary training step, images/s", value, "at least 2x", ok))
    run = results.get("run", {})
    top1, fit_s = _get(run, "final", "val/acc_top1"), run.get("fit_s")
    if top1 is not None and fit_s is not None:
        value = (
            f"{100 * top1:.2f}% after {run.get('epochs_done')} epochs, {fit_s:.0f} s of training"
        )
        ok = (top1 >= 0.85 and fit_s <= 310) if judge else None
    else:
        value, ok = f"not measured ({run.get('status', 'not run')})", False if judge else None
    lines.append(
        (
            "CIFAR-10 fully binary ResNet-18, validation top-1",
            value,
            "at least 85% within 5 minutes",
            ok,
        )
    )
    return lines


def _environment_line(env: dict[str, Any]) -> str:
    gpu = env.get("gpu")
    where = (
        f"{gpu} ({env.get('gpu_memory_gb')} GB, compute {env.get('compute_capability')}), "
        f"driver {env.get('driver')}"
        if gpu
        else "no GPU (CPU dry run)"
    )
    return (
        f"{where}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}; Lightning "
        f"{env['lightning']}, Python {env['python']}; {env['cpu_cores']} CPU cores."
    )


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _throughput_lines(part: dict[str, Any]) -> list[str]:
    rows = []
    for mode in ("eager", "compiled"):
        for net in ("binary", "float"):
            r = _get(part, mode, net)
            if r:
                peak = r.get("peak_bytes")
                compile_s = _get(part, "compile_s", net) if mode == "compiled" else None
                rows.append([
                    mode, net, f"{r['images_per_s']:.0f}", r["spread"], f"{r['step_ms']:.1f}",
                    "—" if peak is None else f"{peak / 2**20:.0f}",
                    "—" if compile_s is None else f"{compile_s:.0f}",
                ])  # fmt: skip
    head = ["mode", "net", "images/s", "spread", "step ms", "peak MB", "compile s"]
    return _table(head, rows) if rows else ["not measured", ""]


def _run_lines(run: dict[str, Any]) -> list[str]:
    lines = [
        f"Planned {run.get('planned_epochs')} epochs for {run.get('train_budget_s', 0):.0f} s of "
        f"training; ran {run.get('epochs_done')} epochs ({run.get('steps')} steps) in "
        f"{run.get('fit_s', 0):.0f} s of `fit`, {run.get('wall_s', 0):.0f} s in all"
        + (" (stopped by trainer.max_time)" if run.get("stopped_early") else "")
        + f". Final: {json.dumps(run.get('final'))}.",
        "",
    ]
    epochs = run.get("epochs") or []
    every = max(1, len(epochs) // 15)
    shown = [e for e in epochs if e["epoch"] % every == 0 or e is epochs[-1]]
    rows = [
        [e["epoch"], f"{e['seconds']:.0f}", f"{100 * e.get('val/acc_top1', float('nan')):.2f}%",
         f"{e.get('train/loss', float('nan')):.3f}"]
        for e in shown
    ]  # fmt: skip
    return lines + (_table(["epoch", "seconds", "val top-1", "train loss"], rows) if rows else [])


def markdown(results: dict[str, Any]) -> str:
    """The report: environment, summary against the targets, then each part."""
    title = "GPU check" + (" (dry run, toy sizes on CPU)" if results["dry_run"] else "")
    lines = [f"# {title} {results['date']}", "", _environment_line(results["environment"])]
    lines += [f"All parts: {results['wall_s']:.0f} s (budget {results['budget_s']:.0f} s).", ""]
    lines += ["## Summary", ""]
    lines += _table(
        ["measure", "value", "target", "met"], [[*s[:3], MET[s[3]]] for s in summary(results)]
    )
    parts = [
        [k, results[k].get("status"), f"{results[k].get('seconds', 0):.0f}",
         f"{results[k].get('box_s', 0):.0f}"]
        for k in ("tests", "throughput", "data", "run")
    ]  # fmt: skip
    lines += _table(["part", "status", "seconds", "time box"], parts)
    tests = results["tests"]
    lines += ["## pytest -m gpu tests/gpu", ""]
    lines += [f"{tests.get('passed', 0)} passed, {len(tests.get('failed', []))} failed, "
              f"{tests.get('skipped', 0)} skipped.", ""]  # fmt: skip
    lines += [f"- FAILED {f}" for f in tests.get("failed", [])]
    lines += [f"- skipped: {r}" for r in tests.get("skip_reasons", [])] + [""]
    tp = results["throughput"]
    lines += [f"## Training step: ResNet-18 (CIFAR stem, width {tp.get('width')}), batch "
              f"{tp.get('batch')}, bf16 autocast + channels_last", ""]  # fmt: skip
    lines += _throughput_lines(tp)
    data = results.get("data", {})
    lines += ["## Data path (configs/cifar10/gpu.yaml's training loader, to the device)", ""]
    if "images_per_s" in data:
        batch = data["batch"]
        lines += [f"{data['images_per_s']:.0f} images/s over {data['batches']} batches; each "
                  f"reached the training step as {batch['dtype']} {batch['shape']} on "
                  f"{batch['device']}"
                  + (f"; the uint8 images were on {data['uint8_images_on']}."
                     if data.get("uint8_images_on") else "."), ""]  # fmt: skip
    else:
        lines += [str(data.get("status")), ""]
    lines += ["## Real run: configs/cifar10/gpu.yaml", ""]
    lines += _run_lines(results.get("run", {}))
    return "\n".join(lines)


def write_report(results: dict[str, Any], stem: Path) -> list[Path]:
    """``<stem>.json`` and ``<stem>.md``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(results, indent=2, default=str))
    paths[1].write_text(markdown(results))
    return paths
