"""Data pipelines: images/s delivered against images/s a training step consumes; Lighting cost.

1. Training loaders of the DataModules on the real archives (``BNN_DATA_DIR``, extracted into
   ``BNN_CACHE_DIR``): the HolmesShuan collection's CIFAR pipeline on the CIFAR-10 JPEG folder
   (PIL, per image), the in-memory fast path (uint8 tensor, batch augmentation), and the ImageNet
   pipeline (RandomResizedCrop 224, flip, ColorJitter, Lighting) on Imagenette, with 0, 1 and 2
   workers.
2. What a training step consumes: forward + backward + Adam of binary ResNet-18s (CIFAR stem at
   32 px, width 32; ImageNet stem at 224 px, width 64) in bf16 autocast + channels_last (fp32 on
   a CPU without native bf16, as ``precision: auto`` trains there).
3. ``Lighting``: the HolmesShuan collection's numpy version on a PIL image against ours on a
   float tensor (one image and a batch of 64), both on one thread, and how far its uint8 version
   is from the definition.

Rates are the median over repeats after a warm-up (worker start-up excluded); the spread is the
min-max range. The machine is shared, so numbers move with its load.
``python benchmarks/bench_data.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bnn_lightning.data import ImageFolderDataModule, Lighting
from bnn_lightning.data.transforms import IMAGENET_EIGVAL, IMAGENET_EIGVEC
from bnn_lightning.models import BinaryResNet
from bnn_lightning.precision import cpu_bf16

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BNN_DATA_DIR", ROOT.parent / "shared" / "data"))


def spread(rates: list[float]) -> dict[str, Any]:
    return {"images/s": statistics.median(rates), "spread": f"{min(rates):.0f}-{max(rates):.0f}"}


def endless(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


def loader_rate(dm: ImageFolderDataModule, batches: int, repeats: int) -> dict[str, Any]:
    """Images/s of ``dm``'s training batches, the device-side transforms included (persistent
    workers started before timing)."""
    loader = dm.train_dataloader()
    batches_iter = endless(lambda: iter(loader))
    for _ in range(3):
        next(batches_iter)
    rates = []
    for _ in range(repeats):
        start, seen = time.perf_counter(), 0
        for _ in range(batches):  # in memory: the batch augmentation runs after the loader
            seen += len(dm.transform_batch(next(batches_iter), train=True)[0])
        rates.append(seen / (time.perf_counter() - start))
    return spread(rates)


def pipeline_rows(quick: bool) -> list[dict[str, Any]]:
    cifar, nette = DATA / "cifar10-jpeg-train.tar.gz", DATA / "imagenette-224.tar.gz"
    small = dict(pipeline="cifar", image_size=32)
    cases = [  # name, archive, options, batch size, batches per repeat, workers
        ("CIFAR, per-image pipeline (PIL)", cifar, small, 128, 10, (0, 1, 2)),
        ("CIFAR, in memory (batch aug)", cifar, {**small, "in_memory": True}, 128, 40, (0, 1)),
        ("ImageNet 224 (PIL)", nette, dict(image_size=224), 32, 4, (0, 1, 2)),
    ]
    rows = []
    for name, archive, options, batch, batches, workers in cases:
        if not archive.is_file():
            continue
        for w in workers[:2] if quick else workers:
            dm = ImageFolderDataModule(
                str(archive), batch_size=batch, num_workers=w, val_size=0.1, **options
            )
            dm.prepare_data()
            dm.setup("fit")
            n = max(2, batches // 4) if quick else batches
            rows.append({"what": name, "workers": w, "batch": batch, **loader_rate(dm, n, 3)})
    return rows


def step_rate(stem: str, size: int, width: int, batch: int, repeats: int) -> dict[str, Any]:
    """Images/s of a channels_last training step of a binary ResNet-18, in bf16 autocast where
    the CPU has native bf16."""
    model = BinaryResNet("resnet18", 10, stem=stem, width=width).to(
        memory_format=torch.channels_last
    )
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    bf16 = cpu_bf16()  # once, outside the timed step

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        rates.append(batch / (time.perf_counter() - start))
    return spread(rates)


def collection_lighting(img: Image.Image, alphastd: float = 0.1) -> tuple[Image.Image, np.ndarray]:
    """The HolmesShuan collection's Lighting (numpy on uint8 PIL, cast back) and its offset."""
    eigval, eigvec = np.asarray(IMAGENET_EIGVAL), np.asarray(IMAGENET_EIGVEC)
    alpha = (np.random.randn(3) * alphastd).astype("float32")
    inc = np.dot(eigvec, (alpha * eigval).reshape(3, 1)).reshape(3)
    out = np.clip(np.add(img, inc), 0, 255)
    return Image.fromarray(out.astype(np.uint8), "RGB"), inc


def time_per_image(fn: Callable[[], Any], images: int, repeats: int) -> dict[str, Any]:
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(images / (time.perf_counter() - start))
    return spread(rates)


def lighting_rows(quick: bool) -> tuple[list[dict[str, Any]], tuple[float, float]]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    one, batch = torch.rand(3, 224, 224), torch.rand(64, 3, 224, 224)
    ours, k = Lighting(0.1), 10 if quick else 50
    rows = [
        {"what": "Lighting, HolmesShuan (numpy on PIL uint8)", **time_per_image(
            lambda: [collection_lighting(img) for _ in range(k)], k, 5)},
        {"what": "Lighting, ours (float tensor, 1 image)", **time_per_image(
            lambda: [ours(one) for _ in range(k)], k, 5)},
        {"what": "Lighting, ours (float tensor, batch 64)", **time_per_image(
            lambda: ours(batch), 64, 5)},
    ]  # fmt: skip
    applied, intended = [], []
    for _ in range(200):
        out, inc = collection_lighting(img)
        change = (np.asarray(out, np.float32) - np.asarray(img, np.float32)).mean((0, 1))
        applied.append(np.abs(change).mean())
        intended.append(np.abs(inc * 255).mean())  # fb.resnet.torch: offset on [0, 1] pixels
    return rows, (float(np.mean(applied)), float(np.mean(intended)))


def run(quick: bool = False) -> dict[str, Any]:
    rows = pipeline_rows(quick)
    steps = {
        "CIFAR": ("cifar", 32, 32, 128),
        "ImageNet 224": ("imagenet", 224, 64, 16),
    }
    for key, args in steps.items():
        step = step_rate(*args, repeats=2 if quick else 4)
        dtype = "bf16" if cpu_bf16() else "fp32"
        rows.append({"what": f"train step consumes: {key} ResNet-18 w{args[2]} {dtype}", **step})
        for row in rows:
            if row["what"].startswith(key) and "workers" in row:
                row["data/step"] = row["images/s"] / step["images/s"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # numpy's Lighting is single-threaded too
    try:
        light, (applied, intended) = lighting_rows(quick)
    finally:
        torch.set_num_threads(threads)
    rows += light
    best = {r["what"]: r["data/step"] for r in rows if "data/step" in r and r["workers"] == 0}
    notes = (
        f"torch threads {threads} (Lighting rows: 1), {os.cpu_count()} CPUs (shared). data/step is "
        "loader images/s over training-step images/s (target >= 2). Worker 0 ratios: "
        + ", ".join(f"{k} {v:.1f}x" for k, v in best.items())
        + f". Lighting(0.1): fb.resnet.torch's definition shifts a channel by {intended:.2f} "
        f"uint8 steps on average; the HolmesShuan collection's version (eigenvalues for [0, 1] "
        f"pixels applied to 0-255 pixels, then truncated to uint8) shifts it by {applied:.2f}; "
        "ours applies the definition exactly on float pixels."
    )
    plot = {f"{r['what']} ({r['workers']}w)": r["images/s"] for r in rows if "workers" in r}
    return {
        "title": "Data pipelines: loader images/s vs training-step images/s, and Lighting",
        "rows": rows,
        "notes": notes,
        "plot": {"label": "images/s", "values": plot},
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, default=str))
