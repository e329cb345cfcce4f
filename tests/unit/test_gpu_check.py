"""``make gpu-check`` (``benchmarks/gpu_check.py``): its parts at toy size on CPU, and its report.

The fast tests run the data-path, real-run and (eager) throughput parts in this process on a
generated tree, and check the report's arithmetic on fabricated full-size results; the ``slow``
one runs ``gpu_check.py --dry-run`` as a user would, every part in its own time-boxed process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_parts  # noqa: E402
import gpu_report  # noqa: E402
import gpu_setup  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0"
failures="1" skipped="2" tests="5" time="3.2"><testcase classname="tests.gpu.a" name="t[cuda]"/>
<testcase classname="tests.gpu.a" name="u[cuda]"><failure message="AssertionError: 3 != 4&#10;more">
trace</failure></testcase><testcase classname="tests.gpu.b" name="v[cuda]"><skipped
message="needs a CUDA device"/></testcase><testcase classname="tests.gpu.b" name="w[cuda]">
<skipped message="needs a CUDA device"/></testcase><testcase classname="c" name="x"/></testsuite>
</testsuites>"""


def full_results(**changes: Any) -> dict[str, Any]:
    """Results shaped like a full-size run's, every target met."""
    results: dict[str, Any] = {
        "date": "2026-01-01_0000", "dry_run": False, "budget_s": 470.0, "wall_s": 465.0,
        "environment": {
            "gpu": "NVIDIA H200", "gpu_memory_gb": 150.0, "compute_capability": "9.0",
            "driver": "580.1", "torch": "2.11", "cuda": "13.0", "cudnn": 91000,
            "lightning": "2.6.6", "python": "3.12", "cpu_cores": 16,
        },
        "tests": {"status": "ok", "passed": 6, "failed": [], "skipped": 0, "seconds": 50},
        "throughput": {
            "status": "ok", "batch": 512, "width": 64, "compile_s": {"binary": 40, "float": 30},
            "eager": {
                "binary": {"images_per_s": 10000.0, "spread": "9900-10100", "step_ms": 51.2},
                "float": {"images_per_s": 12000.0, "spread": "11900-12100", "step_ms": 42.7},
                "binary_over_float_time": 1.2,
            },
            "compiled": {
                "binary": {"images_per_s": 20000.0, "spread": "1-2", "step_ms": 25.6},
                "float": {"images_per_s": 21000.0, "spread": "1-2", "step_ms": 24.4},
                "binary_over_float_time": 1.05,
            },
        },
        "data": {"status": "ok", "images_per_s": 50000.0, "batches": 40, "batch": None,
                 "train_images": 45000, "val_images": 5000},
        "run": {"status": "ok", "planned_epochs": 46, "epochs_done": 46, "fit_s": 290.0,
                "train_budget_s": 300.0, "final": {"val/acc_top1": 0.861}, "epochs": []},
    }  # fmt: skip
    for key, value in changes.items():
        part, field = key.split("__")
        results[part][field] = value
    return results


def test_parse_junit_counts_passes_failures_and_skip_reasons(tmp_path: Path) -> None:
    (tmp_path / "j.xml").write_text(JUNIT)
    parsed = gpu_report.parse_junit(tmp_path / "j.xml")
    assert (parsed["tests"], parsed["passed"], parsed["skipped"]) == (5, 2, 2)
    assert parsed["failed"] == ["tests.gpu.a::u[cuda]: AssertionError: 3 != 4"]
    assert parsed["skip_reasons"] == ["needs a CUDA device"]


def test_pytest_output_of_a_stopped_run_is_counted() -> None:
    text = (
        "tests/gpu/test_device_ddp.py::test_x[cuda] PASSED   [ 20%]\n"
        "tests/gpu/test_device_fused.py::test_y[cuda-1-1-1.0-False] FAILED   [ 40%]\n"
        "tests/gpu/test_device_fused.py::test_y[cuda-2-2-0.0-True] SKIPPED (no) [ 60%]\n"
        "tests/gpu/test_device_compile.py::test_z[cuda] "  # killed while running
    )
    parsed = gpu_report.parse_pytest_output(text)
    assert (parsed["tests"], parsed["passed"], parsed["skipped"]) == (3, 1, 1)
    assert parsed["failed"] == [
        "tests/gpu/test_device_fused.py::test_y[cuda-1-1-1.0-False]: failed"
    ]


def test_epochs_fill_the_training_time_at_the_measured_speeds() -> None:
    # an epoch: 45,000 images through data (50k/s) then the step (10k/s) = 5.4 s, plus 5,000
    # validation images at 3 x 10k/s = 0.167 s; 90% of 300 s holds 48 of them
    assert gpu_report.estimate_epochs(full_results(), 300.0) == 48
    assert gpu_report.estimate_epochs(full_results(), 1.0) == 1
    unmeasured = full_results(data__images_per_s=None)
    assert gpu_report.estimate_epochs(unmeasured, 300.0) == gpu_report.FALLBACK_EPOCHS


def test_summary_judges_each_target() -> None:
    assert [line[3] for line in gpu_report.summary(full_results())] == [True] * 4
    slow = full_results(run__fit_s=420.0, throughput__status="ok")
    slow["throughput"]["compiled"]["binary_over_float_time"] = 1.2
    slow["data"]["images_per_s"] = 30000.0  # 1.5x the compiled binary step
    slow["tests"]["failed"] = ["tests/gpu/x::y[cuda]: boom"]
    assert [line[3] for line in gpu_report.summary(slow)] == [False] * 4
    dry = full_results()
    dry["dry_run"] = True
    assert [line[3] for line in gpu_report.summary(dry)] == [None] * 4


def test_find_archive_looks_in_bnn_data_dir_then_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNN_DATA_DIR", str(tmp_path / "env"))
    assert gpu_setup.find_archive(tmp_path) is None
    for folder in ("data", ".gpu/data", "env"):  # each found folder wins over the ones before
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / gpu_setup.ARCHIVE).write_bytes(b"")
        assert gpu_setup.find_archive(tmp_path) == tmp_path / folder / gpu_setup.ARCHIVE


def test_missing_packages_without_wheels_are_one_error_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "torchdata" else find_spec(name)
    )
    with pytest.raises(SystemExit, match=r"needs torchdata: .*\(`make gpu-bundle`\)"):
        gpu_setup.ensure_packages(tmp_path)


def test_parts_at_toy_size_make_a_complete_report(tmp_path: Path) -> None:
    """Eager throughput, data path and a one-epoch real run in this process; then the report."""
    shared = gpu_check.data_args(None, tmp_path)
    saved: list[dict[str, Any]] = []
    results = full_results()
    results["dry_run"] = True
    results["throughput"] = gpu_parts.throughput(gpu_parts.DRY, saved.append, modes=(False,))
    results["data"] = gpu_parts.data_path(gpu_parts.DRY, shared, saved.append)
    run_args = [*shared, "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    results["run"] = gpu_parts.real_run(run_args, saved.append)
    for part in ("throughput", "data", "run"):
        results[part]["status"] = "ok"

    eager = results["throughput"]["eager"]
    assert eager["binary"]["images_per_s"] > 0 and eager["binary_over_float_time"] > 0
    assert results["data"]["batch"] == {
        "device": "cpu",
        "dtype": "torch.float32",
        "shape": [16, 3, 32, 32],
    }
    assert results["data"]["batches"] == gpu_parts.DRY.data_batches
    assert (results["data"]["train_images"], results["data"]["val_images"]) == (100, 20)
    assert results["data"]["uint8_images_on"] == "cpu"  # the device-side path, on this device
    run = results["run"]
    assert run["epochs_done"] == 1 and run["steps"] == 100 // 16 and not run["stopped_early"]
    assert 0 <= run["final"]["val/acc_top1"] <= 1 and len(run["epochs"]) == 1
    paths = gpu_report.write_report(results, tmp_path / "report")
    text = paths[1].read_text()
    for heading in ("## Summary", "## pytest -m gpu", "## Training step", "## Data path"):
        assert heading in text
    assert "| eager | binary |" in text and "| 1 |" in text
    assert json.loads(paths[0].read_text())["run"]["epochs_done"] == 1


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_the_report(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"]
    result = subprocess.run(
        [*command, "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report,) = tmp_path.glob("gpu-dry-run-*.json")
    results = json.loads(report.read_text())
    assert {results[k]["status"] for k in ("tests", "throughput", "data", "run")} == {"ok"}
    tests = results["tests"]
    assert tests["skipped"] > 0 and tests["failed"] == [] and tests["passed"] == 0  # no CUDA here
    for mode in ("eager", "compiled"):
        assert results["throughput"][mode]["binary"]["images_per_s"] > 0
    assert results["data"]["images_per_s"] > 0 and results["run"]["epochs_done"] == 1
    assert report.with_suffix(".md").is_file()
