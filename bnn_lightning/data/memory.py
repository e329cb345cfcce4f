"""The fast data path: a uint8 image tensor in memory, augmented a whole batch at a time.

:class:`TensorImageDataset` serves ``(uint8 image (3, H, W), target)`` pairs from one tensor;
:class:`BatchCollate` stacks them and runs the batch transform. :class:`BatchAugment` is the
HolmesShuan collection's CIFAR augmentation (RandomCrop with padding, horizontal flip,
RandomRotation with nearest interpolation and zero fill) done with a few tensor ops on the whole
batch, so serving a batch costs far less than a training step and works with ``num_workers=0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

__all__ = ["BatchAugment", "BatchCollate", "BatchNormalize", "TensorImageDataset"]


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


class BatchAugment(nn.Module):
    """Random crop with zero padding, horizontal flip and rotation, drawn per image of a batch.

    The three are coordinate maps, so they are composed into one source index per output pixel
    and applied with a single ``gather``: output pixel ``(i, j)`` is rotated back about the image
    center, rounded (nearest interpolation), un-flipped and shifted by the crop offset into the
    zero-padded image; pixels that rotate in from outside the crop are 0 (torchvision's fill).

    Args:
        padding: zero padding on every side before the random crop back to the input size.
        rotation: maximum rotation in degrees (uniform in ``[-rotation, rotation]``); 0 for none.
        flip: flip each image left-right with probability 0.5.
        autoaugment: apply AutoAugment (CIFAR-10 policy) to each image after the geometry.
    """

    def __init__(
        self, padding: int = 4, rotation: float = 15.0, flip: bool = True, autoaugment: bool = False
    ) -> None:
        super().__init__()
        self.padding = padding
        self.rotation = rotation
        self.flip = flip
        self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if autoaugment else None

    def make_params(self, n: int) -> dict[str, Tensor]:
        """Random angle (radians), flip flag and crop offsets for ``n`` images, each ``(n,)``."""
        p = self.padding
        return {
            "angle": (torch.rand(n) * 2 - 1) * math.radians(self.rotation),
            "flip": torch.rand(n) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool),
            "dy": torch.randint(0, 2 * p + 1, (n,)),
            "dx": torch.randint(0, 2 * p + 1, (n,)),
        }

    def source_index(self, h: int, w: int, params: dict[str, Tensor]) -> Tensor:
        """Index into each flattened padded image (one extra zero slot at the end), (n, h*w)."""
        angle, flip, dy, dx = (params[k].view(-1, 1, 1) for k in ("angle", "flip", "dy", "dx"))
        n, p = len(angle), self.padding
        y = torch.arange(h, dtype=torch.float32).view(1, h, 1).expand(n, h, w)
        x = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(n, h, w)
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

    def forward(self, images: Tensor) -> Tensor:
        n, c, h, w = images.shape
        p = self.padding
        padded = F.pad(images, (p, p, p, p)).view(n, c, -1)
        padded = torch.cat([padded, padded.new_zeros(n, c, 1)], dim=2)
        index = self.source_index(h, w, self.make_params(n)).unsqueeze(1).expand(n, c, h * w)
        images = padded.gather(2, index).view(n, c, h, w)
        if self.autoaugment is not None:
            images = torch.stack([self.autoaugment(img) for img in images])
        return images

    def extra_repr(self) -> str:
        aa = self.autoaugment is not None
        return (
            f"padding={self.padding}, rotation={self.rotation}, flip={self.flip}, autoaugment={aa}"
        )


class BatchCollate:
    """Collate ``(image, target)`` pairs into a batch, then run batch transforms on the images.

    The transforms run on one torch thread (restored afterwards): these are small tensor ops, and
    on a busy CPU OpenMP's fan-out over two threads made them 3-30x slower in the main process
    (measured in ``benchmarks/bench_data.py``). Picklable, so it also runs in DataLoader workers.
    """

    def __init__(self, *transforms: Callable[[Tensor], Tensor]) -> None:
        self.transforms = transforms

    def __call__(self, samples: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            images = torch.stack([img for img, _ in samples])
            targets = torch.tensor([t for _, t in samples], dtype=torch.int64)
            for transform in self.transforms:
                images = transform(images)
        finally:
            torch.set_num_threads(threads)
        return images, targets
