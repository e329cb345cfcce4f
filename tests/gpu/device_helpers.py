"""Small learnable image trees and CLI arguments for the device tests."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
QUICKSTART = CONFIGS / "cifar10" / "quickstart.yaml"
NO_CUDA = (
    "needs a CUDA device (torch.cuda.is_available() is False); run `pytest -m gpu` or "
    "`make gpu-check` on a machine with an NVIDIA GPU"
)
CUDA = pytest.param("cuda", marks=pytest.mark.gpu, id="cuda")
"""The ``cuda`` variant of the ``device`` fixture, for tests that list their own variants."""


def write_color_tree(root: Path, per_class: int, classes: int = 10, size: int = 32) -> Path:
    """``root/train/c<k>/<i>.png``: class ``k`` is a colour of its own plus noise (learnable)."""
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 216, (classes, 3))
    for k in range(classes):
        folder = root / "train" / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 41, (size, size, 3))
            pixels = np.clip(palette[k] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def data_args(tree: Path, cache: Path, batch_size: int, val_size: int) -> list[str]:
    """Overrides that point an ``ImageFolderDataModule`` config at ``tree``."""
    return [
        "--data.init_args.root", str(tree),
        "--data.init_args.cache_dir", str(cache),
        "--data.init_args.val_size", str(val_size),
        "--data.init_args.batch_size", str(batch_size),
        "--data.init_args.num_workers", "0",
    ]  # fmt: skip


def quiet_run_args(out: Path, device: str) -> list[str]:
    """Run on ``device`` with outputs under ``out``: no logger, progress bar or model summary."""
    return [
        "--trainer.accelerator", device,
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--threads", "null",
        "--compile", "false",  # the quickstart compiles; test_device_compile turns it back on
    ]  # fmt: skip


class LossRecorder(L.Callback):
    """The training loss of every step, and the device and dtype of every training batch."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.batches: list[tuple[str, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.batches.append((batch[0].device.type, str(batch[0].dtype)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.losses.append(float(outputs["loss"]))
