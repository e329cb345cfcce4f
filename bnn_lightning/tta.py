"""Test-time augmentation: the logits of a few views of each image, averaged.

Averaging the predictions of mirrored and shifted copies of a test image is as old as AlexNet
(Krizhevsky et al., 2012, ten crops); the 6-view weighting below is the one of Keller Jordan's
fast CIFAR-10 training ("94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024). The network
stays fully binary; each view costs one more forward pass.

* ``none``: the logits of the image;
* ``flip``: the mean of the logits of the image and of its left-right mirror (2 passes);
* ``flip_shift``: half of ``flip``, plus half of the mean over the image and its mirror, each
  shifted one pixel down-right and one pixel up-left with reflect padding (6 passes).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TTA_MODES", "TTAMode", "check_tta", "shift", "tta_logits"]

TTAMode = Literal["none", "flip", "flip_shift"]
TTA_MODES: tuple[str, ...] = get_args(TTAMode)


def check_tta(mode: str) -> str:
    """``mode``, or a one-line error naming the valid modes."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta={mode!r} is not a test-time augmentation; use one of {TTA_MODES}.")
    return mode


def shift(images: Tensor, dy: int, dx: int) -> Tensor:
    """``images`` (N, C, H, W) moved ``dy`` pixels down and ``dx`` right (negative: up, left),
    with the uncovered border filled by reflection (``|dy|, |dx| < H, W``)."""
    h, w = images.shape[-2:]
    py, px = abs(dy), abs(dx)
    padded = F.pad(images, (px, px, py, py), mode="reflect")
    return padded[..., py - dy : py - dy + h, px - dx : px - dx + w]


def tta_logits(net: nn.Module, images: Tensor, mode: str) -> Tensor:
    """The ``mode`` average of ``net``'s logits over the views of ``images`` (module docstring)."""
    if check_tta(mode) == "none":
        return net(images)
    views = [images, images.flip(-1)]
    logits = sum(net(v) for v in views) / 2
    if mode == "flip":
        return logits
    shifted = sum(net(shift(v, d, d)) for v in views for d in (1, -1))
    return logits / 2 + shifted / 8
