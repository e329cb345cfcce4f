"""Helpers of the reliability tests: a tiny image tree, ``bnn`` runs in a subprocess, tiny
in-process modules and trainers, and the comparison of two recorded runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TINY_CONFIG = HERE / "tiny.yaml"
CLASSES = 4


def write_image_tree(root: Path, per_class: int = 10, size: int = 16) -> Path:
    """``root/train/class<k>/<i>.png``: random RGB images, one channel darkened per class."""
    rng = np.random.default_rng(0)
    for k in range(CLASSES):
        folder = root / "train" / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., k % 3] //= 4
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def bnn_env() -> dict[str, str]:
    """The environment of ``bnn`` runs: one thread, ``faults`` importable, W&B offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), "WANDB_MODE": "offline"}


def bnn_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnn_lightning", *args]


def bnn(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m bnn_lightning *args`` to its end."""
    return subprocess.run(
        bnn_command(*args), env=bnn_env(), cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def fit_args(tree: Path, run: Path, *extra: str, **faults: int) -> list[str]:
    """``fit`` of ``tiny.yaml`` on ``tree`` into ``run``, recorded to ``run/rec``.

    ``faults``: ``kill_at_step`` / ``kill_in_save`` of :class:`faults.Recorder`.
    """
    recorder = {"out": str(run / "rec"), **faults}
    callback = json.dumps({"class_path": "faults.Recorder", "init_args": recorder})
    return [
        "fit", "--config", str(TINY_CONFIG),
        "--data.init_args.root", str(tree),
        "--data.init_args.cache_dir", str(run / "cache"),
        "--trainer.default_root_dir", str(run),
        "--trainer.callbacks+=" + callback,
        *extra,
    ]  # fmt: skip


def run_differences(a: Path, b: Path) -> dict[str, Any]:
    """What differs between two recorded runs: weight tensors and metrics (empty: identical)."""
    wa = torch.load(a / "rec" / "final.pt", weights_only=True)
    wb = torch.load(b / "rec" / "final.pt", weights_only=True)
    ma = json.loads((a / "rec" / "metrics.json").read_text())
    mb = json.loads((b / "rec" / "metrics.json").read_text())
    diffs: dict[str, Any] = {k: "weights differ" for k in wa if not torch.equal(wa[k], wb[k])}
    diffs |= {k: (ma.get(k), mb.get(k)) for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k)}
    return diffs


def recorded_losses(run: Path, rank: int = 0) -> dict[int, float]:
    losses = json.loads((run / "rec" / f"losses{rank}.json").read_text())
    return {int(k): v for k, v in losses.items()}


def tiny_net(num_classes: int = CLASSES, **kwargs: Any) -> BinaryResNet:
    return BinaryResNet("resnet18", num_classes, stem="cifar", width=8, **kwargs)


def tiny_module(num_classes: int = CLASSES, **kwargs: Any) -> BNNClassifier:
    return BNNClassifier(tiny_net(num_classes), num_classes, **kwargs)


def tensor_loader(n: int = 16, num_classes: int = CLASSES, batch_size: int = 4) -> DataLoader:
    """Fixed random 16x16 images and labels, in order."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def tiny_trainer(root: Path, **kwargs: Any) -> L.Trainer:
    """A quiet CPU trainer writing under ``root``."""
    options: dict[str, Any] = {
        "accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False,
        "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "num_sanity_val_steps": 0, "default_root_dir": root,
    }  # fmt: skip
    return L.Trainer(**{**options, **kwargs})


def save_checkpoint(module: BNNClassifier, path: Path, root: Path) -> Path:
    """A real Lightning checkpoint of ``module`` after one training step."""
    trainer = tiny_trainer(root, max_steps=1)
    trainer.fit(module, tensor_loader(num_classes=module.num_classes))
    trainer.save_checkpoint(path)
    return path
