"""Augmentation pipelines, Lighting's formula, MixUp/CutMix targets, batch augmentation maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from bnn_lightning.data.memory import BatchAugment, BatchNormalize
from bnn_lightning.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitterSwitch,
    Lighting,
    batch_mix,
    cifar_train_transform,
    eval_transform,
    imagenet_train_transform,
)

EIGVAL = np.array(IMAGENET_EIGVAL)
EIGVEC = np.array(IMAGENET_EIGVEC)


def pil(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def normalized_range(mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return -m / s, (1 - m) / s


# --- Lighting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [[0.1, -0.2, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, -2.0]])
def test_lighting_offset_is_eigvec_times_alpha_eigval(alpha: list[float]) -> None:
    expected = EIGVEC @ (np.array(alpha) * EIGVAL)
    got = Lighting(0.1).rgb_offset(torch.tensor(alpha))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_lighting_adds_one_offset_per_image_from_the_eigenbasis() -> None:
    torch.manual_seed(1)
    images = torch.rand(4096, 3, 4, 4)
    out = Lighting(0.1)(images)
    delta = out - images
    offset = delta[:, :, 0, 0]
    torch.testing.assert_close(
        delta, offset[:, :, None, None].expand_as(delta)
    )  # spatially constant
    alpha = (offset.double() @ torch.tensor(EIGVEC)) / torch.tensor(EIGVAL)  # eigvec orthonormal
    assert alpha.std(0).tolist() == pytest.approx([0.1] * 3, rel=0.06)
    assert alpha.mean(0).abs().max() < 0.01
    assert offset.std(0).min() > 0  # each image drew its own alpha


def test_lighting_keeps_sub_uint8_noise_and_single_images() -> None:
    img = torch.full((3, 8, 8), 0.5)
    out = Lighting(0.01)(img)
    delta = (out - img)[:, 0, 0]
    assert out.shape == img.shape
    assert 0 < delta.abs().max() < 1 / 255 * 3  # a uint8 round-trip zeroes most
    assert torch.equal(Lighting(0.0)(img), img)


def test_lighting_rejects_uint8_and_bad_eigen_shapes() -> None:
    with pytest.raises(ValueError, match="float RGB"):
        Lighting(0.1)(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3x3"):
        Lighting(0.1, eigval=(1.0, 2.0))


# --- per-image pipelines ----------------------------------------------------------------------


@pytest.mark.parametrize("autoaugment", [False, True])
def test_cifar_train_transform_shape_dtype_range(autoaugment: bool) -> None:
    tf = cifar_train_transform(CIFAR10_MEAN, CIFAR10_STD, autoaugment=autoaugment)
    low, high = normalized_range(CIFAR10_MEAN, CIFAR10_STD)
    for seed in range(5):
        x = tf(pil(32, 32, seed=seed))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert (x >= low - 1e-5).all() and (x <= high + 1e-5).all()


def test_cifar_train_transform_works_on_uint8_tensors_too() -> None:
    x = cifar_train_transform()(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


@pytest.mark.parametrize("crop", ["random_resized", "resize_random"])
def test_imagenet_train_transform_shape_and_lighting(crop: str) -> None:
    jitter = ColorJitterSwitch()
    tf = imagenet_train_transform(image_size=48, crop=crop, color_jitter=jitter, lighting=0.1)  # type: ignore[arg-type]
    x = tf(pil(70, 90))
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert any(isinstance(t, Lighting) for t in tf.transforms)
    assert jitter in tf.transforms


def test_imagenet_train_transform_rejects_unknown_crop() -> None:
    with pytest.raises(ValueError, match="Unknown crop 'center'"):
        imagenet_train_transform(crop="center")  # type: ignore[arg-type]


def test_eval_transform_resizes_by_ratio_then_center_crops() -> None:
    img = pil(73, 73)  # already int(64 * 1.15) = 73: resize is a no-op, the crop drops the border
    x = eval_transform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), image_size=64, ratio=1.15)(img)
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    assert x.shape == (3, 64, 64)
    torch.testing.assert_close(x, expected[:, 4:68, 4:68])
    wide = eval_transform(IMAGENET_MEAN, IMAGENET_STD, image_size=64, ratio=1.35)(pil(100, 300))
    assert wide.shape == (3, 64, 64)
    same = eval_transform((0.0,) * 3, (1.0,) * 3, image_size=32)(pil(32, 32))
    torch.testing.assert_close(same, torch.from_numpy(np.array(pil(32, 32))).permute(2, 0, 1) / 255)


# --- colour jitter switch ---------------------------------------------------------------------


class _Constant(Dataset):
    """Grey images through a brightness-halving jitter."""

    def __init__(self, jitter: ColorJitterSwitch) -> None:
        self.jitter = jitter

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.jitter(torch.full((3, 2, 2), 0.8))


def test_color_jitter_switch_reaches_persistent_workers() -> None:
    jitter = ColorJitterSwitch(brightness=(0.5, 0.5), contrast=0, saturation=0, hue=0)
    loader = DataLoader(_Constant(jitter), batch_size=2, num_workers=1, persistent_workers=True)
    assert torch.allclose(next(iter(loader)), torch.full((2, 3, 2, 2), 0.4))
    jitter.set_enabled(False)
    assert torch.allclose(next(iter(loader)), torch.full((2, 3, 2, 2), 0.8))
    jitter.set_enabled(True)
    assert torch.allclose(next(iter(loader)), torch.full((2, 3, 2, 2), 0.4))
    assert "enabled=True" in repr(jitter)


# --- MixUp / CutMix ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_batch_mix_soft_targets_sum_to_one(mixup: float, cutmix: float) -> None:
    mix = batch_mix(5, mixup, cutmix)
    assert mix is not None
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 5
    for _ in range(5):
        out, targets = mix(images, labels)
        assert out.shape == images.shape
        assert targets.shape == (8, 5) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        assert ((targets > 0).sum(1) <= 2).all()  # a mix of at most two classes


def test_batch_mix_is_none_when_both_alphas_are_zero() -> None:
    assert batch_mix(10) is None


# --- batch augmentation (in-memory fast path) -------------------------------------------------


def windows(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop of the zero-padded image, plain and flipped."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, [padding] * 4)
    crops = [
        padded[:, y : y + h, x : x + w]
        for y in range(2 * padding + 1)
        for x in range(2 * padding + 1)
    ]
    return crops + [c.flip(-1) for c in crops]


def test_batch_augment_without_rotation_is_a_padded_crop_maybe_flipped() -> None:
    images = torch.randint(1, 256, (64, 3, 12, 10), dtype=torch.uint8)
    out = BatchAugment(padding=3, rotation=0)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for img, res in zip(images, out, strict=True):
        assert any(torch.equal(res, w) for w in windows(img, 3))
    flipped = [
        torch.equal(r, i.flip(-1)) for i, r in zip(images, BatchAugment(0, 0)(images), strict=True)
    ]
    assert 10 < sum(flipped) < 54


def test_batch_augment_params_map_exactly() -> None:
    aug = BatchAugment(padding=2, rotation=90)
    images = torch.randint(1, 256, (3, 3, 8, 8), dtype=torch.uint8)
    params = {
        "angle": torch.tensor([math.pi / 2, 0.0, 0.0]),
        "flip": torch.tensor([False, True, False]),
        "dy": torch.tensor([2, 2, 0]),
        "dx": torch.tensor([2, 2, 0]),
    }
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2)).view(3, 3, -1)
    padded = torch.cat([padded, padded.new_zeros(3, 3, 1)], 2)
    index = aug.source_index(8, 8, params).unsqueeze(1).expand(3, 3, 64)
    out = padded.gather(2, index).view(3, 3, 8, 8)
    assert torch.equal(out[0], images[0].rot90(1, (1, 2)))  # 90 degrees counter-clockwise
    assert torch.equal(out[1], images[1].flip(-1))
    assert torch.equal(out[2, :, 2:, 2:], images[2, :, :6, :6])  # shifted by the padding
    assert (out[2, :, :2] == 0).all() and (out[2, :, :, :2] == 0).all()


def test_batch_augment_rotation_matches_torchvision_nearest() -> None:
    aug = BatchAugment(padding=0, rotation=10, flip=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    params = aug.make_params(4)
    params["angle"] = torch.full((4,), math.radians(10))
    padded = torch.cat([images.view(4, 3, -1), images.new_zeros(4, 3, 1)], 2)
    index = aug.source_index(32, 32, params).unsqueeze(1).expand(4, 3, 1024)
    ours = padded.gather(2, index).view(4, 3, 32, 32)
    theirs = TF.rotate(images, 10.0)  # counter-clockwise, nearest, fill 0
    assert (ours == theirs).float().mean() > 0.99


def test_batch_augment_with_autoaugment_then_normalize() -> None:
    augment, normalize = BatchAugment(autoaugment=True), BatchNormalize(CIFAR10_MEAN, CIFAR10_STD)
    images = normalize(augment(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)))
    low, high = normalized_range(CIFAR10_MEAN, CIFAR10_STD)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert (images >= low - 1e-5).all() and (images <= high + 1e-5).all()


def test_batch_normalize_matches_definition_and_crops() -> None:
    images = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)
    mean, std = (
        torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
    )
    expected = (images.float() / 255 - mean) / std
    torch.testing.assert_close(BatchNormalize(IMAGENET_MEAN, IMAGENET_STD)(images), expected)
    cropped = BatchNormalize(IMAGENET_MEAN, IMAGENET_STD, crop_size=6)(images)
    torch.testing.assert_close(cropped, expected[:, :, 2:8, 2:8])
