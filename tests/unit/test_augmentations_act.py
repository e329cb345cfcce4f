"""Each step of the training pipelines acts: crop, flip, rotation, AutoAugment, jitter, Lighting.

A pipeline that silently lost a step would still give images of the right shape and range, so
these tests read the geometry back from marked images: two coloured blobs for the CIFAR pipeline
(their midpoint moves with the crop, the angle between them with the rotation, and a flip turns
it by 180 degrees), coordinate ramps for the ImageNet pipeline (the red and green channels hold
the source x and y, so the slope and mean of each give the crop box and the flip).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from bnn_lightning.data.memory import BatchAugment
from bnn_lightning.data.transforms import (
    ColorJitterSwitch,
    cifar_train_transform,
    imagenet_train_transform,
)

IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # normalization that keeps pixels in [0, 1]
DRAWS = 64


def blobs() -> torch.Tensor:
    """32x32 black image: a red 4x4 blob centred at (y, x) = (15.5, 9.5), a green one at (15.5,
    21.5); their midpoint is the image centre, which a flip keeps."""
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[0, 14:18, 8:12] = 255
    image[1, 14:18, 20:24] = 255
    return image


def centroid(channel: torch.Tensor) -> torch.Tensor:
    """``(y, x)`` centre of mass of a non-negative 2-D map."""
    ys, xs = torch.meshgrid(
        torch.arange(channel.shape[0], dtype=torch.float64),
        torch.arange(channel.shape[1], dtype=torch.float64),
        indexing="ij",
    )
    mass = channel.double().sum()
    return torch.stack([(ys * channel).sum() / mass, (xs * channel).sum() / mass])


def blob_geometry(out: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Angle (degrees, in (-180, 180]) of the red->green vector and the midpoint's ``(dy, dx)``."""
    red, green = centroid(out[0]), centroid(out[1])
    dy, dx = (green - red).tolist()
    mid = (red + green) / 2
    return math.degrees(math.atan2(dy, dx)), mid - torch.tensor([15.5, 15.5])


def cifar_outputs(
    path: str, image: torch.Tensor, rotation: float, padding: int = 4, autoaugment: bool = False
) -> list[torch.Tensor]:
    """``DRAWS`` augmentations of ``image`` in [0, 1]: per image (PIL path) or as one batch."""
    torch.manual_seed(0)
    if path == "batch":  # the in-memory fast path
        augment = BatchAugment(padding=padding, rotation=rotation, autoaugment=autoaugment)
        return list(augment(image.expand(DRAWS, -1, -1, -1).clone()).float() / 255)
    options = dict(padding=padding, rotation=rotation, autoaugment=autoaugment)
    tf = cifar_train_transform(*IDENTITY, **options)  # type: ignore[arg-type]
    return [tf(image) for _ in range(DRAWS)]


def cifar_draws(path: str, rotation: float) -> list[tuple[float, torch.Tensor]]:
    return [blob_geometry(out) for out in cifar_outputs(path, blobs(), rotation)]


PATHS = pytest.mark.parametrize("path", ["per_image", "batch"])


@PATHS
def test_cifar_crop_shifts_within_its_padding(path: str) -> None:
    shifts = torch.stack([shift for _, shift in cifar_draws(path, rotation=0)])
    torch.testing.assert_close(shifts, shifts.round())  # whole pixels
    assert shifts.abs().max() == 4  # RandomCrop(32, padding=4) reaches its padding, no further
    assert (shifts.abs().sum(1) > 0).sum() > DRAWS // 2  # most crops are off-centre
    assert len({tuple(s) for s in shifts.tolist()}) >= 10  # many different offsets


@PATHS
def test_cifar_flip_turns_the_pair_around_half_the_time(path: str) -> None:
    angles = [angle for angle, _ in cifar_draws(path, rotation=0)]
    flipped = sum(abs(a) > 90 for a in angles)
    assert all(min(abs(a), 180 - abs(a)) < 1e-6 for a in angles)  # no rotation asked
    assert 0.2 * DRAWS < flipped < 0.8 * DRAWS


@PATHS
def test_cifar_rotation_turns_the_pair_up_to_its_degrees(path: str) -> None:
    angles = [angle for angle, _ in cifar_draws(path, rotation=15)]
    tilt = [a if abs(a) <= 90 else a - math.copysign(180, a) for a in angles]  # undo the flip
    assert max(abs(t) for t in tilt) <= 15 + 3  # RandomRotation(15), nearest resampling
    assert max(tilt) > 12 and min(tilt) < -12  # both directions, close to the limit
    assert sum(abs(t) > 2 for t in tilt) > DRAWS // 2


@PATHS
def test_cifar_autoaugment_changes_pixels_beyond_flip(path: str) -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    plain = image.float() / 255

    def unchanged(outs: list[torch.Tensor]) -> int:  # crop and rotation off: only flip remains
        return sum(any(torch.allclose(o, r) for r in (plain, plain.flip(-1))) for o in outs)

    assert unchanged(cifar_outputs(path, image, rotation=0, padding=0)) == DRAWS
    augmented = cifar_outputs(path, image, rotation=0, padding=0, autoaugment=True)
    assert unchanged(augmented) < DRAWS * 2 // 3
    tf = cifar_train_transform(autoaugment=True)
    policy = [t.policy for t in tf.transforms if isinstance(t, v2.AutoAugment)]
    assert policy == [v2.AutoAugmentPolicy.CIFAR10]


def ramps(height: int = 64, width: int = 80) -> Image.Image:
    """Red holds ``x / (width - 1)``, green ``y / (height - 1)`` (scaled to 0-255), blue 0."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / (width - 1), y * 255 / (height - 1), np.zeros_like(x)], -1)
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def crop_box(out: torch.Tensor) -> tuple[float, float, float, bool]:
    """Width and height of the crop as fractions of the source, its centre x, and the flip."""
    red, green = out[0].double(), out[1].double()
    n = out.shape[-1] - 1
    slope_x = (red[:, -4:].mean() - red[:, :4].mean()) / (n - 3)  # away from the edges
    slope_y = (green[-4:].mean() - green[:4].mean()) / (n - 3)
    return (
        abs(float(slope_x)) * (n + 1),
        float(slope_y) * (n + 1),
        float(red.mean()),
        bool(slope_x < 0),
    )


def imagenet_draws(crop: str, **options: object) -> list[tuple[float, float, float, bool]]:
    torch.manual_seed(0)
    tf = imagenet_train_transform(*IDENTITY, image_size=48, crop=crop, **options)  # type: ignore[arg-type]
    return [crop_box(tf(ramps())) for _ in range(DRAWS)]


def test_imagenet_random_resized_crop_covers_8_to_100_percent() -> None:
    boxes = imagenet_draws("random_resized", lighting=0.0)
    areas = [w * h for w, h, _, _ in boxes]
    assert min(areas) > 0.08 * 0.8 and max(areas) < 1.05  # scale=(0.08, 1), up to resampling
    assert min(areas) < 0.25 and max(areas) > 0.75  # the scale is drawn over its range
    aspect = [(w * 80) / (h * 64) for w, h, _, _ in boxes]  # in source pixels
    assert min(aspect) > 0.75 * 0.85 and max(aspect) < 4 / 3 * 1.15  # ratio=(3/4, 4/3)
    assert min(aspect) < 0.85 and max(aspect) > 1.2
    flips = sum(f for *_, f in boxes)
    assert 0.2 * DRAWS < flips < 0.8 * DRAWS


def test_imagenet_resize_then_random_crop_moves_a_fixed_window() -> None:
    boxes = imagenet_draws("resize_random", lighting=0.0)
    side = 48 / round(48 * 256 / 224)  # RandomCrop(48) of the image resized to 55 (short side)
    for w, h, _, _ in boxes:
        assert abs(h - side) < 0.03  # a fixed crop size, as a fraction of the short side
        assert abs(w - side * 64 / 80) < 0.03
    centres = [round(c, 2) for _, _, c, _ in boxes]
    assert len(set(centres)) >= 5  # the position is drawn: not a centre crop
    flips = sum(f for *_, f in boxes)
    assert 0.2 * DRAWS < flips < 0.8 * DRAWS


def test_imagenet_lighting_adds_a_constant_offset_per_channel() -> None:
    image = ramps()
    torch.manual_seed(3)
    lit = imagenet_train_transform(*IDENTITY, image_size=48, lighting=0.1)(image)  # type: ignore[arg-type]
    torch.manual_seed(3)  # same crop and flip: Lighting draws after them
    dark = imagenet_train_transform(*IDENTITY, image_size=48, lighting=0.0)(image)  # type: ignore[arg-type]
    offset = (lit - dark).flatten(1)
    assert offset.abs().max() > 1e-4
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset))


def test_imagenet_colour_jitter_acts_until_switched_off() -> None:
    image = ramps()

    def run(jitter: ColorJitterSwitch | None) -> torch.Tensor:
        torch.manual_seed(5)
        tf = imagenet_train_transform(*IDENTITY, image_size=48, color_jitter=jitter, lighting=0.0)  # type: ignore[arg-type]
        return torch.stack([tf(image) for _ in range(4)])

    plain, jitter = run(None), ColorJitterSwitch()
    assert (run(jitter) - plain).abs().max() > 0.05
    jitter.set_enabled(False)
    torch.testing.assert_close(run(jitter), plain)
