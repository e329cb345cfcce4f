"""In-memory images and the batch transforms of the fast data path.

:class:`TensorImageDataset` serves ``(uint8 image (3, H, W), target)`` pairs from one tensor
``(N, 3, H, W)``; :class:`RaggedImageDataset` serves images of different sizes (the ImageNet
pipeline keeps each image whole, its shorter side resized). :class:`BatchAugment` is the CIFAR
augmentation of the HolmesShuan collection (RandomCrop with padding, horizontal flip,
RandomRotation with nearest interpolation and zero fill) done with a few tensor ops on a whole
batch, on the batch's device, drawing from its own generator; :class:`BatchNormalize` scales
and normalizes a uint8 batch. :mod:`bnn_lightning.data.device` runs them after the transfer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from bnn_lightning.data.resumable import RandomStream

__all__ = ["BatchAugment", "BatchNormalize", "RaggedImageDataset", "TensorImageDataset"]


class TensorImageDataset(Dataset[tuple[Tensor, int]]):
    """``(uint8 image (3, H, W), class index)`` pairs from one uint8 tensor ``(N, 3, H, W)``."""

    def __init__(self, images: Tensor, targets: Sequence[int] | Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(targets):
            raise ValueError(
                f"TensorImageDataset needs uint8 images (N, 3, H, W) and N targets, got "
                f"{images.dtype} {tuple(images.shape)} and {len(targets)} targets."
            )
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])


class RaggedImageDataset(Dataset[tuple[Tensor, int]]):
    """``(uint8 image (3, H_i, W_i), class index)`` pairs of images of different sizes.

    Args:
        pixels: every image's ``(3, H_i, W_i)`` pixels, flattened and concatenated (uint8).
        shapes: ``(N, 2)`` heights and widths.
        targets: ``N`` class indices.
    """

    def __init__(self, pixels: Tensor, shapes: Tensor, targets: Sequence[int] | Tensor) -> None:
        sizes = 3 * shapes[:, 0] * shapes[:, 1]
        if pixels.dtype != torch.uint8 or len(shapes) != len(targets) or sizes.sum() != len(pixels):
            raise ValueError(
                f"RaggedImageDataset needs uint8 pixels of {int(sizes.sum())} values for "
                f"{len(shapes)} images and as many targets, got {pixels.dtype} {len(pixels)} "
                f"values and {len(targets)} targets."
            )
        self.pixels, self.shapes = pixels, shapes
        self.offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]).tolist()
        self.targets = torch.as_tensor(targets, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        h, w = self.shapes[index].tolist()
        start = self.offsets[index]
        return self.pixels[start : start + 3 * h * w].view(3, h, w), int(self.targets[index])


class BatchNormalize(nn.Module):
    """uint8 batch -> float in [0, 1] -> ``(x - mean) / std``, optionally center-cropped first."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], crop_size: int | None = None
    ) -> None:
        super().__init__()
        self.crop = v2.CenterCrop(crop_size) if crop_size else None
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if self.crop is not None:
            images = self.crop(images)
        if images.dtype == torch.uint8:
            return torch.addcmul(-self.mean / self.std, images.float(), 1 / (255 * self.std))
        return (images - self.mean) / self.std


class BatchAugment(RandomStream):
    """Random crop with zero padding, horizontal flip and rotation, drawn per image of a batch.

    The three are coordinate maps, so they are composed into one source index per output pixel
    and applied with a single ``gather``: output pixel ``(i, j)`` is rotated back about the image
    center, rounded (nearest interpolation), un-flipped and shifted by the crop offset into the
    zero-padded image; pixels that rotate in from outside the crop are 0 (torchvision's fill).
    Every draw comes from :attr:`generator`, on the batch's device (see
    :class:`~bnn_lightning.data.resumable.RandomStream`).

    Args:
        padding: zero padding on every side before the random crop back to the input size.
        rotation: maximum rotation in degrees (uniform in ``[-rotation, rotation]``); 0 for none.
        flip: flip each image left-right with probability 0.5.
        autoaugment: apply AutoAugment (CIFAR-10 policy) to each image after the geometry.
        seed: seed of the generator.
        device: device of the generator (that of the batches).
    """

    def __init__(
        self,
        padding: int = 4,
        rotation: float = 15.0,
        flip: bool = True,
        autoaugment: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(seed, device)
        self.padding = padding
        self.rotation = rotation
        self.flip = flip
        self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if autoaugment else None

    def make_params(self, n: int) -> dict[str, Tensor]:
        """Random angle (radians), flip flag and crop offsets for ``n`` images, each ``(n,)``."""
        g, p, device = self.generator, self.padding, self.device
        angle = (torch.rand(n, generator=g, device=device) * 2 - 1) * math.radians(self.rotation)
        flip = torch.rand(n, generator=g, device=device) < 0.5
        return {
            "angle": angle,
            "flip": flip if self.flip else torch.zeros(n, dtype=torch.bool, device=device),
            "dy": torch.randint(0, 2 * p + 1, (n,), generator=g, device=device),
            "dx": torch.randint(0, 2 * p + 1, (n,), generator=g, device=device),
        }

    def source_index(self, h: int, w: int, params: dict[str, Tensor]) -> Tensor:
        """Index into each flattened padded image (one extra zero slot at the end), (n, h*w)."""
        angle, flip, dy, dx = (params[k].view(-1, 1, 1) for k in ("angle", "flip", "dy", "dx"))
        n, p, device = len(angle), self.padding, angle.device
        y = torch.arange(h, dtype=torch.float32, device=device).view(1, h, 1).expand(n, h, w)
        x = torch.arange(w, dtype=torch.float32, device=device).view(1, 1, w).expand(n, h, w)
        if self.rotation:
            cos, sin = angle.cos(), angle.sin()
            cy, cx = (h - 1) / 2, (w - 1) / 2
            y, x = y - cy, x - cx
            y, x = (cos * y + sin * x + cy).round(), (cos * x - sin * y + cx).round()
        inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
        x = torch.where(flip, w - 1 - x, x)
        width = w + 2 * p
        index = (y.long() + dy) * width + (x.long() + dx)
        zero_slot = (h + 2 * p) * width
        return torch.where(inside, index, zero_slot).view(n, h * w)

    def __call__(self, images: Tensor) -> Tensor:
        if images.device != self.device:
            raise ValueError(
                f"BatchAugment's generator is on {self.device} but the images are on "
                f"{images.device}; reseed it on the images' device (reseed(seed, device))."
            )
        n, c, h, w = images.shape
        p = self.padding
        padded = F.pad(images, (p, p, p, p)).view(n, c, -1)
        padded = torch.cat([padded, padded.new_zeros(n, c, 1)], dim=2)
        index = self.source_index(h, w, self.make_params(n)).unsqueeze(1).expand(n, c, h * w)
        images = padded.gather(2, index).view(n, c, h, w)
        if self.autoaugment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(self.draw_seed())
                images = torch.stack([self.autoaugment(img) for img in images])
        return images

    def __repr__(self) -> str:
        aa = self.autoaugment is not None
        return (
            f"BatchAugment(padding={self.padding}, rotation={self.rotation}, flip={self.flip}, "
            f"autoaugment={aa})"
        )
