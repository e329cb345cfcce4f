"""A callback the DDP stream tests load by class path: each rank's first training batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch


class FirstBatch(L.Callback):
    """Save this rank's first training batch, as the step sees it, to ``out/first<rank>.pt``.

    The batch is taken after the DataModule's ``on_after_batch_transfer``: augmented,
    normalized and mixed.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            images, targets = batch
            first = {"images": images.float().cpu(), "targets": targets.cpu()}
            torch.save(first, self.out / f"first{trainer.global_rank}.pt")
