"""The benchmark report: summary against the targets, markdown, plot, quickstart parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_kernels  # noqa: E402
import bench_quickstart  # noqa: E402
import run as runner  # noqa: E402
import targets  # noqa: E402

STEP = "ResNet-18 cifar w64 batch 128 train step, "


def step_row(setting: str, mode: str, ms: float, **extra: Any) -> dict[str, Any]:
    return {
        "setting": STEP + setting,
        "mode": mode,
        "median_ms": ms,
        "items_per_s": 128e3 / ms,
        **extra,
    }


def fake_results() -> dict[str, Any]:
    """Rows shaped like the benchmark modules' (binary_vs_float, compiled, data, quickstart)."""
    return {
        "date": "2026-01-01_0000",
        "quick": False,
        "load_avg_end": 3.5,
        "hardware": {
            "cpu": "CPU",
            "cores": 2,
            "torch_threads": 2,
            "python": "3.11",
            "torch": "2.x",
            "gpu": None,
            "load_avg_1m": 2.5,
        },
        "benchmarks": {
            "binary_vs_float": {
                "title": "binary vs float",
                "rows": [
                    {"setting": "8x(BN, conv3x3 64ch)", "mode": "binary", "median_ms": 1.0},
                    step_row(
                        "fp32 eager", "binary", 1000.0, memory_ratio=0.9, spread_ms="800-3000"
                    ),
                    step_row("fp32 eager", "float", 1000.0, spread_ms="1000-2000"),
                    step_row("bf16 autocast + channels_last", "binary", 420.0, memory_ratio=1.2),
                    step_row("bf16 autocast + channels_last", "float", 400.0),
                ],
                "plot": {"label": "binary / float time", "values": {"a": 1.0}},
            },
            "compiled": {
                "rows": [
                    step_row("compiled, bf16 autocast + channels_last", "binary", 300.0),
                    step_row("compiled, bf16 autocast + channels_last", "float", 300.0),
                ]
            },
            "data": {
                "rows": [
                    {"what": "CIFAR, PIL", "workers": 0, "data/step": 1.5},
                    {"what": "CIFAR, PIL", "workers": 2, "data/step": 3.0},
                    {"what": "train step consumes: CIFAR", "images/s": 9.0},
                ]
            },
            "export": {"error": "Traceback ...", "title": "export"},
            "quickstart": {"rows": [{"wall_min": 9.5, "val/acc_top1": 0.6123}]},
        },
    }


def by_measure(summary: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["measure"]: entry for entry in summary}


def test_summary_ratios_and_targets() -> None:
    summary = by_measure(targets.summarize(fake_results()))
    fp32 = summary["ResNet-18 train step time, binary / float, fp32 eager"]
    assert (fp32["number"], fp32["value"], fp32["met"]) == (1.0, "1.00x", True)
    assert fp32["best"] == "0.80x"  # fastest repeats: 800 ms / 1000 ms
    bf16 = summary["ResNet-18 train step time, binary / float, bf16 + channels_last"]
    assert bf16["number"] == pytest.approx(1.05) and bf16["met"] is True  # 1.05x is the target
    assert bf16["target"] == "<= 1.05x"
    speedup = summary[
        "binary images/s, bf16 + channels_last (the quickstart's setting) / fp32 eager float"
    ]
    assert speedup["number"] == pytest.approx(1000 / 420) and speedup["met"] is False  # < 3x
    compiled = summary["binary images/s, compiled / fp32 eager float"]
    assert compiled["number"] == pytest.approx(1000 / 300) and compiled["met"] is None
    assert compiled["best"] == "—"  # no spread recorded
    memory = summary["ResNet-18 train step peak memory, binary / float, bf16 + channels_last"]
    assert memory["met"] is False and memory["target"] == "<= 0.80x"
    data = summary["CIFAR, PIL: loader / training step images/s (best workers)"]
    assert data["number"] == 3.0 and data["met"] is True
    assert summary["make train final validation top-1"]["value"] == "61.2%"
    export = summary["export size, fp32 / packed file, resnet18 cifar (10 classes)"]
    assert export["value"] == targets.NOT_MEASURED and export["met"] is None


def test_summary_on_a_cpu_without_bf16_judges_fp32_channels_last() -> None:
    """Where ``precision: auto`` trains in fp32, the quickstart's setting is fp32 + channels_last:
    its rows are judged against the 1.05x and 3x targets, not missing bf16 rows."""
    results = fake_results()
    label = "fp32 + channels_last (no native bf16 on this CPU)"
    results["benchmarks"]["binary_vs_float"]["rows"][3:] = [
        step_row(label, "binary", 900.0, memory_ratio=0.7),
        step_row(label, "float", 1000.0),
    ]
    results["hardware"] |= {"cpu_capability": "AVX2", "native_bf16": False}
    results["hardware"]["keep_cpu_memory"] = True
    results["summary"] = targets.summarize(results)
    summary = by_measure(results["summary"])
    time = summary["ResNet-18 train step time, binary / float, fp32 + channels_last"]
    assert time["number"] == pytest.approx(0.9) and time["met"] is True
    speedup = summary[
        "binary images/s, fp32 + channels_last (the quickstart's setting) / fp32 eager float"
    ]
    assert speedup["number"] == pytest.approx(1000 / 900) and speedup["met"] is False
    memory = summary["ResNet-18 train step peak memory, binary / float, fp32 + channels_last"]
    assert memory["number"] == 0.7 and memory["met"] is True
    assert not any("bf16 + channels_last" in measure for measure in summary)
    report = runner.markdown(results)
    assert "AVX2, native bf16: no (precision: auto trains in fp32)" in report
    assert "freed CPU memory kept (as the bnn CLI on the CPU): yes" in report


def test_summary_of_an_empty_run_reports_everything_as_not_measured() -> None:
    results = {**fake_results(), "benchmarks": {}}
    summary = targets.summarize(results)
    assert {entry["item"] for entry in summary} == {"1", "2", "3", "4", "5"}
    assert all(entry["value"] == targets.NOT_MEASURED for entry in summary)


def test_markdown_report_and_plot(tmp_path: Path) -> None:
    results = fake_results()
    results["summary"] = targets.summarize(results)
    text = runner.markdown(results)
    assert "load average (1 min) 2.5 at the start, 3.5 at the end" in text.lower()
    assert (
        "| 1 | ResNet-18 train step time, binary / float, fp32 eager | 1.00x | 0.80x | <= 1.10x "
        "| yes |" in text
    )
    assert "| **no** |" in text  # the bf16 memory ratio misses its target
    assert "Traceback ..." in text  # a failed benchmark shows its error
    assert runner.plot(results, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_quickstart_final_line_is_parsed() -> None:
    output = (
        "noise\nFinal validation: val/acc_top1=0.6120, val/acc_top5=0.9610, val/loss=1.2000; "
        "binary layers {'binary': 16}; wall time 9m30s (start-up 9s, data 14s, training 8m40s, "
        "validation 20s, other 7s).\nmore noise\n"
    )
    final = bench_quickstart.parse_final(output)
    assert final["wall"] == (
        "9m30s (start-up 9s, data 14s, training 8m40s, validation 20s, other 7s)"
    )
    assert final["metrics"] == {"val/acc_top1": 0.612, "val/acc_top5": 0.961, "val/loss": 1.2}
    assert final["modes"] == "{'binary': 16}"
    assert final["tta"] == "none"  # a line from before the test-time augmentation was printed
    final = bench_quickstart.parse_final(
        output.replace("wall time", "test-time augmentation flip_shift; wall time")
    )
    assert final["tta"] == "flip_shift" and final["wall"].startswith("9m30s (start-up 9s")
    with pytest.raises(RuntimeError, match="no 'Final validation' line"):
        bench_quickstart.parse_final("Traceback: killed")


def test_quick_quickstart_reuses_the_latest_full_measurement(tmp_path: Path) -> None:
    def write(date: str, quickstart: dict[str, Any]) -> None:
        data = {"benchmarks": {"quickstart": quickstart}}
        (tmp_path / f"{date}.json").write_text(json.dumps(data))

    write("2026-01-01_0000", {"rows": [{"wall_min": 9.0}]})
    write("2026-01-02_0000", {"rows": [{"wall_min": 8.0}]})
    write("2026-01-03_0000", {"rows": [{"wall_min": 8.0}], "reused_from": "2026-01-02_0000"})
    write("2026-01-04_0000", {"rows": [], "notes": "skipped"})
    assert bench_quickstart.latest_full_result(tmp_path) == (
        "2026-01-02_0000",
        {"rows": [{"wall_min": 8.0}]},
    )
    assert bench_quickstart.latest_full_result(tmp_path / "missing") is None


def test_render_rewrites_the_report_of_a_results_file(tmp_path: Path) -> None:
    path = tmp_path / "2026-01-01_0000.json"
    path.write_text(json.dumps(fake_results()))
    assert runner.main(["--render", str(path)]) == 0
    results = json.loads(path.read_text())
    assert len(results["summary"]) == len(targets.summarize(fake_results()))
    assert "## Summary" in path.with_suffix(".md").read_text()
    assert path.with_suffix(".png").stat().st_size > 0


def test_kernel_benchmark_times_every_level_this_cpu_runs() -> None:
    from bnn_lightning import fused_cpu

    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    result = bench_kernels.run(quick=True)
    levels = fused_cpu.LEVELS[: fused_cpu.level() + 1]
    keys = {(r["dtype"], r["work"], r["level"]) for r in result["rows"]}
    works = ("sign_codes (forward)", "codes_backward (backward)", "clone")
    expected = {(d, w, lv) for d in ("bfloat16", "float32") for w in works for lv in levels}
    if fused_cpu.level() == fused_cpu.LEVELS.index("avx512"):  # the PReLU kernel vs ATen's ops
        pairs = [(bench_kernels.PRELU, lv) for lv in ("avx512", "ATen ops")]
        expected |= {(d, w, lv) for d in ("bfloat16", "float32") for w, lv in pairs}
    assert keys == expected
    for row in result["rows"]:
        assert row["median_ms"] > 0 and ("speedup" in row) == (row["work"] != "clone")
        if row["level"] in ("portable", "ATen ops") and "speedup" in row:
            assert row["speedup"] == 1.0
    assert set(result["plot"]["values"]) == {f"{w} {lv}" for w in works[:2] for lv in levels}
