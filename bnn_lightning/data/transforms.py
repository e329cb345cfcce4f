"""The HolmesShuan collection's augmentations on ``torchvision.transforms.v2``; PCA ``Lighting``.

Per-image pipelines (PIL image or uint8 tensor in, normalized float CHW tensor out):

- :func:`cifar_train_transform`: RandomCrop(32, padding=4), RandomHorizontalFlip,
  RandomRotation(15), optional AutoAugment (CIFAR-10 policy), normalize.
- :func:`imagenet_train_transform`: RandomResizedCrop(224, scale=(0.08, 1)) or the collection's
  alternative Resize(256) + RandomCrop(224), flip, switchable ColorJitter(0.4, 0.4, 0.4, 0.1),
  ``Lighting(0.1)``, normalize.
- :func:`eval_transform`: Resize(int(size * ratio)) + CenterCrop(size), normalize (HolmesShuan:
  ratio 1.15 or 1.35 on ImageNet; CIFAR uses ratio 1).

Per-batch: :class:`BatchMix` (built by :func:`batch_mix`) applies MixUp / CutMix (soft targets)
to a training batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from bnn_lightning.data.resumable import RandomStream

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchMix",
    "ColorJitterSwitch",
    "Lighting",
    "batch_mix",
    "cifar_train_transform",
    "eval_transform",
    "imagenet_train_transform",
]

Stats = tuple[float, float, float]
CIFAR10_MEAN: Stats = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Stats = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: Stats = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: Stats = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)
# PCA of ImageNet RGB pixels (fb.resnet.torch, quoted by HolmesShuan); columns of EIGVEC are the
# eigenvectors, in the order of EIGVAL.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Lighting(nn.Module):
    """AlexNet-style PCA colour noise on float images in [0, 1] (as in fb.resnet.torch).

    Every image gets ``alpha ~ N(0, alphastd^2)`` (3 values) and the per-channel offset
    ``eigvec @ (alpha * eigval)`` added to all its pixels. Works on one image ``(3, H, W)`` or a
    batch ``(..., 3, H, W)`` (one alpha per image). The result is not clipped, so noise smaller
    than one uint8 step survives (the HolmesShuan PIL version rounds most of it away).

    Args:
        alphastd: standard deviation of ``alpha``; 0 disables the transform.
        eigval: the 3 eigenvalues of the RGB covariance.
        eigvec: 3x3 matrix whose columns are the matching eigenvectors.
    """

    def __init__(
        self,
        alphastd: float = 0.1,
        eigval: Sequence[float] = IMAGENET_EIGVAL,
        eigvec: Sequence[Sequence[float]] = IMAGENET_EIGVEC,
    ) -> None:
        super().__init__()
        self.alphastd = alphastd
        self.eigval: Tensor
        self.eigvec: Tensor
        self.register_buffer("eigval", torch.tensor(eigval, dtype=torch.float32), persistent=False)
        self.register_buffer("eigvec", torch.tensor(eigvec, dtype=torch.float32), persistent=False)
        if self.eigval.shape != (3,) or self.eigvec.shape != (3, 3):
            raise ValueError(
                f"Lighting needs 3 eigenvalues and a 3x3 eigenvector matrix, got shapes "
                f"{tuple(self.eigval.shape)} and {tuple(self.eigvec.shape)}."
            )

    def rgb_offset(self, alpha: Tensor) -> Tensor:
        """Per-channel offset ``eigvec @ (alpha * eigval)`` for ``alpha`` of shape ``(..., 3)``."""
        return (alpha * self.eigval.to(alpha)) @ self.eigvec.to(alpha).T

    def forward(self, img: Tensor) -> Tensor:
        if self.alphastd == 0:
            return img
        if not img.is_floating_point() or img.ndim < 3 or img.shape[-3] != 3:
            raise ValueError(
                f"Lighting expects float RGB images of shape (..., 3, H, W), got {img.dtype} "
                f"{tuple(img.shape)}; put it after ToDtype(torch.float32, scale=True)."
            )
        alpha = torch.randn(*img.shape[:-3], 3, device=img.device) * self.alphastd
        return img + self.rgb_offset(alpha).to(img.dtype)[..., None, None]

    def extra_repr(self) -> str:
        return f"alphastd={self.alphastd}"


class ColorJitterSwitch(nn.Module):
    """``v2.ColorJitter`` behind an on/off flag that is shared with DataLoader worker processes.

    The flag lives in a shared-memory tensor created with the transform (before workers start),
    so :meth:`set_enabled` in the main process reaches running (also persistent) workers.
    Arguments are those of ``v2.ColorJitter`` (HolmesShuan's 0.4, 0.4, 0.4, 0.1 by default).
    """

    def __init__(
        self,
        brightness: float | tuple[float, float] = 0.4,
        contrast: float | tuple[float, float] = 0.4,
        saturation: float | tuple[float, float] = 0.4,
        hue: float | tuple[float, float] = 0.1,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.jitter = v2.ColorJitter(brightness, contrast, saturation, hue)
        self.flag = torch.tensor([enabled]).share_memory_()

    @property
    def enabled(self) -> bool:
        return bool(self.flag.item())

    def set_enabled(self, enabled: bool) -> None:
        """Switch the jitter on or off, in this process and in every worker."""
        self.flag.fill_(enabled)

    def forward(self, img: Tensor) -> Tensor:
        return self.jitter(img) if self.enabled else img

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}"


def _to_normalized(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def cifar_train_transform(
    mean: Sequence[float] = CIFAR100_MEAN,
    std: Sequence[float] = CIFAR100_STD,
    image_size: int = 32,
    padding: int = 4,
    rotation: float = 15.0,
    autoaugment: bool = False,
) -> v2.Compose:
    """The HolmesShuan collection's CIFAR training pipeline (rotation 0 drops RandomRotation)."""
    steps: list[Callable] = [
        v2.RandomCrop(image_size, padding=padding),
        v2.RandomHorizontalFlip(),
    ]
    if rotation:
        steps.append(v2.RandomRotation(rotation))
    if autoaugment:
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    return v2.Compose(steps + _to_normalized(mean, std))


def imagenet_train_transform(
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    image_size: int = 224,
    crop: Literal["random_resized", "resize_random"] = "random_resized",
    color_jitter: ColorJitterSwitch | None = None,
    lighting: float = 0.1,
) -> v2.Compose:
    """The HolmesShuan collection's ImageNet training pipeline.

    Args:
        mean: normalization mean.
        std: normalization std.
        image_size: output side (224 for ImageNet; smaller for quick runs).
        crop: ``random_resized`` (RandomResizedCrop, scale 0.08-1) or ``resize_random``
            (Resize(256) + RandomCrop(224), scaled with ``image_size``).
        color_jitter: the switchable ColorJitter to apply after the flip, or None.
        lighting: ``alphastd`` of :class:`Lighting`; 0 drops it.
    """
    if crop == "random_resized":
        steps: list[Callable] = [
            v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True)
        ]
    elif crop == "resize_random":
        steps = [
            v2.Resize(round(image_size * 256 / 224), antialias=True),
            v2.RandomCrop(image_size),
        ]
    else:
        raise ValueError(f"Unknown crop {crop!r}; use 'random_resized' or 'resize_random'.")
    steps.append(v2.RandomHorizontalFlip())
    if color_jitter is not None:
        steps.append(color_jitter)
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if lighting:
        steps.append(Lighting(lighting))
    return v2.Compose([*steps, v2.Normalize(mean, std)])


def eval_transform(
    mean: Sequence[float], std: Sequence[float], image_size: int, ratio: float = 1.0
) -> v2.Compose:
    """Resize(int(image_size * ratio)) + CenterCrop(image_size), then normalize.

    With ratio 1 images already ``image_size`` square pass through unchanged (CIFAR).
    """
    return v2.Compose(
        [
            v2.Resize(int(image_size * ratio), antialias=True),
            v2.CenterCrop(image_size),
            *_to_normalized(mean, std),
        ]
    )


class BatchMix(RandomStream):
    """MixUp and/or CutMix of a batch (torchvision's), drawing from its own generator.

    Maps ``(images (N, C, H, W), labels (N,))`` to the mixed images and float soft targets of
    shape ``(N, num_classes)`` whose rows sum to 1; with both alphas > 0 each batch picks one of
    the two. torchvision's transforms draw from the global CPU generator, so each batch runs them
    under ``torch.random.fork_rng`` seeded from this stream (a CPU generator: the draws are a few
    scalars, whatever the images' device).

    Args:
        num_classes: classes of the soft targets.
        mixup_alpha: MixUp Beta(alpha, alpha); 0 leaves MixUp out.
        cutmix_alpha: CutMix alpha; 0 leaves CutMix out.
        seed: seed of the generator.
    """

    def __init__(
        self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, seed: int = 0
    ) -> None:
        super().__init__(seed)
        mixes: list[Callable] = []
        if mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not mixes:
            raise ValueError("BatchMix needs mixup_alpha > 0 or cutmix_alpha > 0; both are 0.")
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.draw_seed())
            return self.mix(images, labels)

    def __repr__(self) -> str:
        return f"BatchMix({self.mix})"


def batch_mix(
    num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, seed: int = 0
) -> BatchMix | None:
    """:class:`BatchMix` for these alphas, or None when both are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return BatchMix(num_classes, mixup_alpha, cutmix_alpha, seed)
