"""The quickstart: wall time of ``make train`` and its final validation top-1.

Runs the command of ``make train`` (``bnn fit --config configs/cifar10/quickstart.yaml``, here as
``python -m bnn_lightning fit ...`` with this interpreter) in a subprocess from the repository
root, with one argument added: ``--trainer.default_root_dir`` in a temporary folder, so that the
run's checkpoints and logs do not replace those of your own ``make train``. The wall time is
measured around the subprocess: start-up, data loading, training and validation. The final
validation metrics and the time of each phase (start-up, data, training, validation) are read from
the line the CLI prints after ``fit``. A training run is
measured once (minutes long, it is its own average); the load average before and after it says
how much other processes slowed it. ``--quick`` does not train: it reports the latest full
measurement found in ``benchmarks/results/*.json``, with its date.

``python benchmarks/bench_quickstart.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/cifar10/quickstart.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
TITLE = "Quickstart: wall time of `make train` and its final validation top-1"
FINAL = re.compile(
    r"Final validation: (?P<metrics>.*?); binary layers (?P<modes>.*?); "
    r"(?:test-time augmentation (?P<tta>\S+); )?wall time (?P<wall>.*?)\.?$",
    re.MULTILINE,
)


def command(root_dir: Path) -> list[str]:
    """``make train``'s command, with its checkpoints and logs under ``root_dir``."""
    config = ["fit", "--config", CONFIG, "--trainer.default_root_dir", str(root_dir)]
    return [sys.executable, "-m", "bnn_lightning", *config]


def parse_final(output: str) -> dict[str, Any]:
    """The metrics (``{"val/acc_top1": 0.61, ...}``), layer modes, test-time augmentation and
    wall time (with its phases, ``9m12s (start-up 9s, data 14s, ...)``) of the CLI's last line."""
    found = FINAL.findall(output)
    if not found:
        raise RuntimeError(
            f"The quickstart printed no 'Final validation' line; its output ends with:\n"
            f"{output[-2000:]}"
        )
    metrics, modes, tta, wall = found[-1]
    values = dict(pair.split("=", 1) for pair in metrics.split(", ") if "=" in pair)
    metrics = {k: float(v) for k, v in values.items()}
    return {"metrics": metrics, "modes": modes, "tta": tta or "none", "wall": wall}


def train() -> dict[str, Any]:
    """Run the quickstart once; its row of the table."""
    if not (ROOT / CONFIG).is_file():
        raise FileNotFoundError(f"{CONFIG} is missing; the quickstart benchmark runs that config.")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bnn_bench_quickstart_") as folder:
        start = time.perf_counter()
        done = subprocess.run(
            command(Path(folder)), cwd=ROOT, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f"The quickstart failed (exit {done.returncode}):\n{output[-3000:]}")
    final = parse_final(output)
    return {
        "what": f"make train ({CONFIG})",
        "wall_min": wall / 60,
        **{k: v for k, v in final["metrics"].items() if k in ("val/acc_top1", "val/acc_top5")},
        "binary_layers": final["modes"],
        "tta": final["tta"],
        "phases": final["wall"],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def latest_full_result(folder: Path = RESULTS) -> tuple[str, dict[str, Any]] | None:
    """``(date, result)`` of the newest results file whose quickstart was measured, not reused."""
    for path in sorted(folder.glob("*.json"), reverse=True):
        result = json.loads(path.read_text()).get("benchmarks", {}).get("quickstart", {})
        if result.get("rows") and not result.get("reused_from"):
            return path.stem, result
    return None


def run(quick: bool = False) -> dict[str, Any]:
    """Train the quickstart once; with ``quick``, report the latest full measurement instead."""
    if not quick:
        row = train()
        notes = __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else ""
        return {"title": TITLE, "rows": [row], "notes": notes}
    latest = latest_full_result()
    if latest is None:
        notes = "Skipped with --quick, and no full measurement in benchmarks/results to show."
        return {"title": TITLE, "rows": [], "notes": notes}
    date, result = latest
    notes = f"Not rerun (--quick): the latest full measurement, from {date}."
    return {"title": TITLE, "rows": result["rows"], "notes": notes, "reused_from": date}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
