"""``WeightClip``: clip the latent weights of binarized layers after every optimizer step."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from bnn_lightning.layers import binary_layers

__all__ = ["WeightClip"]


class WeightClip(Callback):
    """Clamp the latent weights of layers with a weight quantizer to ``[-clip, clip]``.

    The clipped STE passes no gradient to a weight beyond ``clip``, so a weight that drifts out
    can never flip back; clipping keeps it in reach (larq's ``weight_clip`` constraint,
    Courbariaux et al., "BinaryConnect", 2015). Layers with real-valued weights are left alone.

    Args:
        clip: Half-width of the allowed interval.
    """

    def __init__(self, clip: float = 1.0) -> None:
        if clip <= 0:
            raise ValueError(f"WeightClip clip={clip} must be positive; e.g. 1.0.")
        self.clip = clip

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        with torch.no_grad():
            for _, layer in binary_layers(pl_module):
                if layer.weight_quantizer is not None:
                    layer.weight.clamp_(-self.clip, self.clip)  # type: ignore[attr-defined]
