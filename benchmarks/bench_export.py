"""1-bit export: file sizes of binary ResNet-18, and the packed XNOR conv against the float conv.

1. Sizes: the default binary ResNet-18 (ImageNet stem, 1000 classes; CIFAR stem, 10 classes;
   width 64) exported with ``export_packed``: file bytes next to the fp32 state dict and the
   size :func:`bnn_lightning.summary.summary` predicts (parameters only; the file adds the
   BatchNorm running statistics and the safetensors header; ``other_B`` is whatever is left,
   byte padding of the packed tensors). ``load_packed`` logits are checked
   bit for bit against the exported model on a random batch.
2. Speed: every distinct binary 3x3 conv of that ResNet-18 at 224x224, batch 1, taken from the
   model itself. ``float``: ``F.conv2d(sign(x), w_q)`` with the quantized weight precomputed (the
   best a float engine can do); ``packed eager`` / ``packed compiled``: ``PackedBinaryConv2d``
   (sign, bit-packing of the activations, XNOR, SWAR popcount, reduction, scale) without and
   with ``torch.compile``. All three outputs are checked against each other first. Times are
   the median of several interleaved repeats after a warm-up (compilation excluded and reported
   separately); the spread is min-max, and ``*_best`` compares the fastest repeats (the least
   disturbed by other processes). The speed part runs on one torch thread: on a shared
   2-core machine two OpenMP threads stall each other whenever one is descheduled, which turns
   sub-millisecond kernels into 100 ms outliers; absolute times still move with load.

``python benchmarks/bench_export.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn_lightning.export import export_packed, export_report, load_packed
from bnn_lightning.layers import BinaryConv2d
from bnn_lightning.models import BinaryResNet
from bnn_lightning.packed import PackedBinaryConv2d


def size_rows(folder: Path) -> list[dict[str, Any]]:
    """Export ResNet-18 (both stems) and compare the file with fp32 and the summary."""
    rows = []
    for stem, classes, side in (("imagenet", 1000, 224), ("cifar", 10, 32)):
        torch.manual_seed(0)
        model = BinaryResNet("resnet18", classes, stem=stem).eval()
        path = export_packed(model, folder / f"resnet18_{stem}.bnn")
        report = export_report(model, path, (3, side, side))
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            equal = torch.equal(load_packed(path)(x), model(x))
        rows.append(
            {
                "item": f"resnet18 {stem} ({classes} classes)",
                "fp32_MB": report.fp32_bytes / 2**20,
                "file_MB": report.file_bytes / 2**20,
                "predicted_MB": report.predicted_bytes / 2**20,
                "bn_stats_KB": report.buffer_bytes / 2**10,
                "header_KB": report.header_bytes / 2**10,
                "other_B": report.overhead_bytes - report.header_bytes,
                "fp32/file": report.compression,
                "logits_equal": equal,
            }
        )
    return rows


def conv_shapes(model: nn.Module, side: int = 224) -> list[tuple[BinaryConv2d, Tensor, int]]:
    """Distinct binary convs of ``model`` at batch 1: (layer, an input, how many share it)."""
    seen: dict[tuple[Any, ...], list[Any]] = {}

    def hook(layer: nn.Module, args: tuple[Tensor, ...], _: Tensor) -> None:
        key = (layer.in_channels, layer.out_channels, layer.stride, tuple(args[0].shape))
        seen.setdefault(key, [layer, args[0].detach().clone(), 0])[2] += 1

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, BinaryConv2d)
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, side, side))
    for handle in handles:
        handle.remove()
    return [tuple(v) for v in seen.values()]  # type: ignore[misc]


def _time(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Interleaved wall times (seconds) after one untimed warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i:
                times[name].append(time.perf_counter() - start)
    return times


def speed_row(layer: BinaryConv2d, x: Tensor, count: int, repeats: int) -> dict[str, Any]:
    """Float vs packed (eager, compiled) time of one conv shape."""
    weight = layer.quantized_weight().detach()
    eager = PackedBinaryConv2d.from_binary_conv(layer)
    compiled = PackedBinaryConv2d.from_binary_conv(layer, use_compile=True)

    def float_conv() -> Tensor:
        sign = torch.where(x >= 0, 1.0, -1.0)
        return F.conv2d(sign, weight, None, layer.stride, layer.padding)

    with torch.no_grad():
        start = time.perf_counter()
        out = compiled(x)
        compile_s = time.perf_counter() - start
        reference = float_conv()
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        assert torch.equal(eager(x), out)
        times = _time(
            {"float": float_conv, "eager": lambda: eager(x), "compiled": lambda: compiled(x)},
            repeats,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    words = eager.weight_bits.numel() * out.shape[-1] * out.shape[-2]
    return {
        "item": f"conv {layer.in_channels}->{layer.out_channels} s{layer.stride[0]} @{x.shape[-1]}",
        "count": count,
        **{f"{k}_ms": 1e3 * v for k, v in med.items()},
        **{
            f"{k}_spread_ms": f"{1e3 * min(times[k]):.2f}-{1e3 * max(times[k]):.2f}"
            for k in ("float", "compiled")
        },
        "compiled_vs_float": med["float"] / med["compiled"],
        "compiled_vs_float_best": min(times["float"]) / min(times["compiled"]),
        "G_words_per_s": words / med["compiled"] / 1e9,
        "compile_s": compile_s,
    }


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        rows = size_rows(Path(folder))
    torch.manual_seed(0)
    model = BinaryResNet("resnet18", 1000, stem="imagenet").eval()
    shapes = conv_shapes(model)
    if quick:
        shapes = [shapes[0], shapes[-1]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        speed = [speed_row(layer, x, count, 5 if quick else 25) for layer, x, count in shapes]
    finally:
        torch.set_num_threads(threads)
    total = {
        k: sum(r[f"{k}_ms"] * r["count"] for r in speed) for k in ("float", "eager", "compiled")
    }
    rows += speed
    rows.append(
        {
            "item": "all binary convs of ResNet-18",
            "count": sum(r["count"] for r in speed),
            **{f"{k}_ms": v for k, v in total.items()},
            "compiled_vs_float": total["float"] / total["compiled"],
        }
    )
    faster = [r["item"] for r in speed if r["compiled_vs_float"] >= 1.0]
    slower = [r["item"] for r in speed if r["compiled_vs_float"] < 1.0]
    notes = (
        f"Packed file {rows[0]['fp32/file']:.1f}x smaller than fp32 (ImageNet head), "
        f"{rows[1]['fp32/file']:.1f}x (CIFAR head). Packed compiled conv vs float conv over all "
        f"binary 3x3 convs at batch 1: {total['float'] / total['compiled']:.2f}x the float speed "
        f"(faster at: {', '.join(faster) or 'none'}; slower at: {', '.join(slower) or 'none'}); "
        f"eager packed is {total['eager'] / total['float']:.0f}x slower than float. "
        "Speed measured on 1 torch thread."
    )
    plot = {r["item"]: r["compiled_vs_float"] for r in speed}
    return {
        "title": "1-bit export: file size and packed XNOR-popcount conv speed (batch 1)",
        "rows": rows,
        "notes": notes,
        "plot": {"label": "packed compiled speed / float conv speed (>1 = faster)", "values": plot},
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, default=str))
