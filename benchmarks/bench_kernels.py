"""The fused binary-conv CPU kernels at each instruction-set level this CPU runs.

:mod:`bnn_lightning.fused_cpu` writes ``sign(x)`` and the packed 2-bit codes in forward
(``sign_codes``) and, in backward, rebuilds the +-1 input and zeroes the input gradient where
``|x| > clip`` (``codes_backward``, two calls). Each row times one training step's worth of that
work: the inputs of the 16 binary 3x3 convs of the default ResNet-18 (CIFAR stem, width 64,
batch 128: 63M elements), channels_last, at each level (portable C++, AVX2, AVX-512 BW), against
``clone`` of the same tensors (one read and one write: what memory alone costs). Times are the
median of interleaved repeats after a warm-up; ``speedup`` is the portable kernels' time over
the level's. Every level writes the same bits (``tests/unit/test_fused.py``).

``python benchmarks/bench_kernels.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
from torch import Tensor

from bnn_lightning import fused_cpu

# (channels, side) of the inputs of ResNet-18's binary 3x3 convs, CIFAR stem, width 64
LAYERS = [(64, 32)] * 4 + [(128, 16)] * 4 + [(256, 8)] * 4 + [(512, 4)] * 4


def _inputs(dtype: torch.dtype, batch: int) -> list[Tensor]:
    return [
        torch.randn(batch, c, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
        for c, side in LAYERS
    ]


def _work(xs: list[Tensor]) -> dict[str, Callable[[], None]]:
    """The forward, the backward and the clone reference over every input."""
    state = [(x, *fused_cpu.sign_codes(x, 1.0)) for x in xs]
    grads = [torch.randn_like(x) for x in xs]

    def forward() -> None:
        for x in xs:
            fused_cpu.sign_codes(x, 1.0)

    def backward() -> None:
        for (_, sign, packed), grad in zip(state, grads, strict=True):
            fused_cpu.codes_backward(packed, sign, None)
            fused_cpu.codes_backward(packed, None, grad)

    def clone() -> None:
        for x in xs:
            x.clone()

    return {"sign_codes (forward)": forward, "codes_backward (backward)": backward, "clone": clone}


def kernel_rows(quick: bool) -> list[dict[str, Any]]:
    """Median ms of each kernel per level and dtype, with the speed-up over the portable one."""
    if fused_cpu.kernels() is None:
        return []
    batch, repeats = (16, 3) if quick else (128, 9)
    levels = range(fused_cpu.level() + 1)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        work = _work(_inputs(dtype, batch))
        times: dict[tuple[str, int], list[float]] = {}
        for i in range(1 + repeats):  # levels interleaved, the first round a warm-up
            for level in levels:
                with mock.patch.object(fused_cpu, "level", lambda level=level: level):
                    for name, run in work.items():
                        start = time.perf_counter()
                        run()
                        if i:
                            times.setdefault((name, level), []).append(time.perf_counter() - start)
        for name in work:
            portable = statistics.median(times[(name, 0)])
            for level in levels:
                seconds = times[(name, level)]
                row = {
                    "dtype": str(dtype).removeprefix("torch."),
                    "work": name,
                    "level": fused_cpu.LEVELS[level],
                    "median_ms": 1e3 * statistics.median(seconds),
                    "spread_ms": f"{1e3 * min(seconds):.1f}-{1e3 * max(seconds):.1f}",
                }
                if name != "clone":
                    row["speedup"] = portable / statistics.median(seconds)
                rows.append(row)
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """The kernel timings (no rows where the kernels cannot be built)."""
    torch.manual_seed(0)
    rows = kernel_rows(quick)
    notes = __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else ""
    if not rows:
        notes = "The fused CPU kernels could not be built here (no C++ compiler?)."
    bf16 = [r for r in rows if r["dtype"] == "bfloat16" and "speedup" in r]
    return {
        "title": "Fused binary-conv CPU kernels: one training step's sign, codes and mask",
        "rows": rows,
        "notes": notes,
        "plot": {
            "label": "speed-up over the portable kernels (bf16)",
            "values": {f"{r['work']} {r['level']}": r["speedup"] for r in bf16},
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
