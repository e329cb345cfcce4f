"""Tiny fake datasets and CLI overrides that let any config run in seconds (CLI / config tests)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets import cifar as cifar_module

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def write_tree(root: Path, splits: dict[str, int], classes: int = 10, size: int = 32) -> Path:
    """``root/<split>/c<k>/<i>.png`` with ``splits[split]`` random RGB images per class."""
    rng = np.random.default_rng(0)
    for split, n in splits.items():
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def write_fake_cifar(root: Path, cls: type[CIFAR10], n: int = 16) -> Path:
    """torchvision's pickle layout for ``cls`` with ``n`` random images per file."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if cls is CIFAR10 else "fine_labels"
    num_classes = 10 if cls is CIFAR10 else 100
    rng = np.random.default_rng(0)
    for name, _ in cls.train_list + cls.test_list:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [i % num_classes for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [f"c{i}" for i in range(num_classes)]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: names}))
    return root


def allow_fake_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake pickles have other md5 sums than the real ones; skip torchvision's check."""
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args: True)


def tiny_data_args(data_class: str, tmp: Path) -> list[str]:
    """CLI overrides that point a config's DataModule at a tiny fake dataset under ``tmp``.

    The dataset is written once: a second call (e.g. from another DDP rank) reuses it.
    """
    common = ["--data.init_args.batch_size", "4"]
    if data_class.endswith(("CIFAR10DataModule", "CIFAR100DataModule")):
        cls = CIFAR100 if data_class.endswith("CIFAR100DataModule") else CIFAR10
        root = tmp / cls.__name__.lower()
        if not root.exists():
            write_fake_cifar(root, cls)
        return [*common, "--data.init_args.root", str(root), "--data.init_args.download", "false"]
    root = tmp / "tree"
    if not root.exists():
        write_tree(root, {"train": 2, "val": 1})
    return [
        *common,
        "--data.init_args.root", str(root),
        "--data.init_args.cache_dir", str(tmp / "cache"),
        "--data.init_args.image_size", "32",
        "--data.init_args.num_workers", "0",
        "--data.init_args.val_size", "null",
    ]  # fmt: skip


def tiny_run_args(tmp: Path, width: int = 8, logger_dir: bool = True) -> list[str]:
    """Overrides for a fast run: a narrow network, outputs under ``tmp / "run"``, no progress bar.

    ``logger_dir`` also sets the logger's ``save_dir`` there (else the CLI's default applies).
    """
    logger = ["--trainer.logger.init_args.save_dir", str(tmp / "run")] if logger_dir else []
    return [
        "--model.net.init_args.width", str(width),
        "--trainer.default_root_dir", str(tmp / "run"),
        *logger,
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--compile", "false",  # the quickstart compiles; test_cli runs it compiled once
    ]  # fmt: skip
