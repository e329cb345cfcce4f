"""A DataModule inside a real Trainer: MixUp/CutMix soft targets reach training steps only."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from bnn_lightning.data import ImageFolderDataModule


class Recorder(L.LightningModule):
    """A linear classifier that records the targets each step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 2)
        self.seen: dict[str, list[Tensor]] = {"train": [], "val": []}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        self.seen["train"].append(targets)
        return F.cross_entropy(self.fc(images.flatten(1)), targets)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.seen["val"].append(batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_mixup_soft_targets_in_training_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.png")
    dm = ImageFolderDataModule(
        str(tmp_path), cache_dir=str(tmp_path / "cache"), pipeline="cifar", image_size=16,
        in_memory=True, batch_size=4, mixup_alpha=0.4, cutmix_alpha=1.0,
    )  # fmt: skip
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, limit_val_batches=2, num_sanity_val_steps=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert len(model.seen["train"]) == 3
    for targets in model.seen["train"]:
        assert targets.shape == (4, 2) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert model.seen["val"] and all(t.dtype == torch.int64 for t in model.seen["val"])
