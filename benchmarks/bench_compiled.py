"""Binary vs float, compiled: the training step of ``bench_binary_vs_float`` under torch.compile.

The third setting of the binary-vs-float comparison (``bench_binary_vs_float.py`` measures fp32
eager and the quickstart's setting): the default binary ResNet-18 (CIFAR stem, width 64, batch
128) against the same network with its quantizers off, each compiled with ``torch.compile``
(inductor, default mode) and trained in the quickstart's precision and memory format (bf16
autocast + channels_last; fp32 + channels_last on a CPU without native bf16). The step is the
same function (forward, cross-entropy, backward, Adam). The first call compiles forward and
backward; its time is reported as ``compile_s`` (shorter when inductor's on-disk cache already
holds the kernels).
Then one untimed warm-up round and interleaved timed rounds, binary and float alternating; the
median is reported with the min-max spread. ``--quick`` skips this benchmark: compiling takes
minutes on a small CPU.

``python benchmarks/bench_compiled.py`` prints the result as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
from bench_binary_vs_float import add_ratios, quickstart_setting, time_row, timed, train_step

from bnn_lightning.models import create_model

BATCH, REPEATS = 128, 15  # the compiled steps vary more on a shared machine


def compiled_rows() -> list[dict[str, Any]]:
    """Compile time, median step time and images/s of the compiled binary and float networks."""
    x = torch.randn(BATCH, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    steps, compile_s = {}, {}
    label, bf16 = quickstart_setting()
    for mode in ("binary", "float"):
        net = create_model("resnet18_cifar", num_classes=10, mode=mode)
        net = net.to(memory_format=torch.channels_last)
        step = train_step(torch.compile(net), x, y, bf16=bf16)
        start = time.perf_counter()
        step()
        compile_s[mode] = time.perf_counter() - start
        steps[mode] = step
    wall, cpu = timed(steps, REPEATS, warmup=1)
    rows = []
    for mode in steps:
        setting = f"ResNet-18 cifar w64 batch {BATCH} train step, compiled, {label}"
        row = time_row(setting, mode, wall[mode], cpu[mode], BATCH)
        rows.append({**row, "compile_s": compile_s[mode]})
    return add_ratios(rows)


def run(quick: bool = False) -> dict[str, Any]:
    """The compiled comparison; skipped (no rows) with ``quick``."""
    title = "Binary vs float, compiled: torch.compile'd training step (CPU)"
    if quick:
        return {
            "title": title,
            "rows": [],
            "notes": "Skipped with --quick (compiling takes minutes).",
        }
    torch.manual_seed(0)
    rows = compiled_rows()
    notes = __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else ""
    return {"title": title, "rows": rows, "notes": notes}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
