"""The fused binary-conv CPU kernels at each instruction-set level this CPU runs.

:mod:`bnn_lightning.fused_cpu` writes ``sign(x)`` and the packed 2-bit codes in forward
(``sign_codes``) and, in backward, rebuilds the +-1 input and zeroes the input gradient where
``|x| > clip`` (``codes_backward``, two calls). Each row times one training step's worth of that
work: the inputs of the 16 binary 3x3 convs of the default ResNet-18 (CIFAR stem, width 64,
batch 128: 63M elements), channels_last, at each level (portable C++, AVX2, AVX-512 BW), against
``clone`` of the same tensors (one read and one write: what memory alone costs). Times are the
median of interleaved repeats after a warm-up; ``speedup`` is the portable kernels' time over
the level's. Every level writes the same bits (``tests/unit/test_fused.py``).

The PReLU backward of the 16 block outputs (``AddPReLU``: the input gradient and the slope
gradient, summed per channel) on CPUs with AVX-512: the one-pass kernel (level ``avx512``) against
the ATen ops that run elsewhere (level ``ATen ops``); ``speedup`` is the ATen ops' time over the
kernel's. Both give the same bits (``tests/unit/test_fused_prelu.py``).

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
from bnn_lightning.fused_prelu import prelu_grads

# (channels, side) of the inputs of ResNet-18's binary 3x3 convs, CIFAR stem, width 64
PRELU = "PReLU backward (AddPReLU)"
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


def prelu_rows(quick: bool) -> list[dict[str, Any]]:
    """Median ms of the PReLU backward of every block output: the kernel and the ATen ops."""
    if fused_cpu.kernels() is None or fused_cpu.level() != fused_cpu.LEVELS.index("avx512"):
        return []
    batch, repeats = (16, 3) if quick else (128, 9)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        zs = _inputs(dtype, batch)
        work = [(z, torch.randn_like(z), torch.rand(1, z.shape[1], 1, 1).to(dtype)) for z in zs]

        def backward(work: list[tuple[Tensor, Tensor, Tensor]] = work) -> None:
            for z, grad, slope in work:
                full = prelu_grads(z, grad, slope, weight_grad=True)[1]
                assert full is not None
                full.sum_to_size(slope.shape)

        times: dict[str, list[float]] = {"avx512": [], "ATen ops": []}
        for i in range(1 + repeats):  # interleaved, the first round a warm-up
            for name in times:
                usable = fused_cpu.prelu_usable if name == "avx512" else lambda z, grad: False
                with mock.patch.object(fused_cpu, "prelu_usable", usable):
                    start = time.perf_counter()
                    backward()
                    if i:
                        times[name].append(time.perf_counter() - start)
        aten = statistics.median(times["ATen ops"])
        for name, seconds in times.items():
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "work": PRELU,
                    "level": name,
                    "median_ms": 1e3 * statistics.median(seconds),
                    "spread_ms": f"{1e3 * min(seconds):.1f}-{1e3 * max(seconds):.1f}",
                    "speedup": aten / statistics.median(seconds),
                }
            )
    return rows


def kernel_rows_only(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sign and codes kernels' rows (their speed-up is over the portable level)."""
    return [r for r in rows if r["work"] != PRELU]


def run(quick: bool = False) -> dict[str, Any]:
    """The kernel timings (no rows where the kernels cannot be built)."""
    torch.manual_seed(0)
    rows = kernel_rows(quick) + prelu_rows(quick)
    notes = " ".join(__doc__.split("\n\n")[1:3]).replace("\n", " ") if __doc__ else ""
    if not rows:
        notes = "The fused CPU kernels could not be built here (no C++ compiler?)."
    bf16 = [r for r in kernel_rows_only(rows) if r["dtype"] == "bfloat16" and "speedup" in r]
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
