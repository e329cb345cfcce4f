"""5. Bad data is an error naming the file or folder and the fix, or handled as documented.

Tried inside a ``fit``: a missing root, an empty class folder, a truncated JPEG and one that is
not a JPEG at all (an error naming the file, or dropped with ``skip_corrupt``), greyscale,
greyscale+alpha, RGBA, palette and 16-bit images (converted to RGB), and a ``val/`` class
that ``train/`` lacks (an error listing it).
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability_helpers import tiny_module, tiny_trainer

from bnn_lightning.data import CorruptImageError, ImageFolderDataModule


def folder_data(root: Path, **kwargs: object) -> ImageFolderDataModule:
    options: dict = {"pipeline": "cifar", "image_size": 16, "val_size": 8, "batch_size": 8}
    return ImageFolderDataModule(str(root), cache_dir=str(root / "cache"), **options | kwargs)


@pytest.fixture
def tree(image_tree: Path, tmp_path: Path) -> Path:
    """A private copy of the 4-class tree (40 PNGs)."""
    return Path(shutil.copytree(image_tree, tmp_path / "tree"))


def fit(data: ImageFolderDataModule, root: Path) -> None:
    tiny_trainer(root, max_steps=-1, max_epochs=1).fit(tiny_module(), data)


def test_5_missing_root_and_empty_class_folder_fail_before_training(tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ImageFolder root .*nowhere does not exist; "):
        folder_data(tree / "nowhere")
    (tree / "train" / "class9").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Class folder .*class9 holds no images"):
        folder_data(tree)


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: buffer.tell() // 2])
    return path


@pytest.mark.parametrize("damage", ["truncated", "not_a_jpeg"])
def test_5_corrupt_jpeg_stops_the_fit_naming_it_or_is_skipped(
    damage: str, tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tree / "train" / "class0" / "bad.jpg"
    if damage == "truncated":
        truncated_jpeg(bad)
    else:
        bad.write_bytes(b"not a jpeg")
    with pytest.raises(CorruptImageError, match=rf"Cannot decode image {bad} .*skip_corrupt"):
        fit(folder_data(tree, val_size=1), tmp_path)  # 40 training images: bad.jpg is one
    with caplog.at_level(logging.WARNING):
        fit(folder_data(tree, skip_corrupt=True), tmp_path)
    assert f"Skipped 1 corrupt image(s) in tree/train, e.g. {bad}" in caplog.text


def write_odd_modes(folder: Path) -> None:
    """The same picture as greyscale, greyscale+alpha, RGBA, palette and 16-bit greyscale."""
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    for mode in ("L", "LA", "RGBA", "P"):
        rgb.convert(mode).save(folder / f"{mode}.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "I16.png")
    rgb.convert("L").save(folder / "grey.jpg")


def test_5_greyscale_and_rgba_images_train_as_rgb(tree: Path, tmp_path: Path) -> None:
    for k in range(4):
        write_odd_modes(tree / "train" / f"class{k}")
    data = folder_data(tree, val_size=4)
    fit(data, tmp_path)
    images, _ = next(iter(data.train_dataloader()))
    assert images.shape[1:] == (3, 16, 16)


def test_5_a_val_class_missing_from_train_is_an_error(tree: Path, tmp_path: Path) -> None:
    shutil.copytree(tree / "train", tree / "val")
    (tree / "val" / "class3").rename(tree / "val" / "class7")
    with pytest.raises(ValueError, match=r"train: \['class3'\], only in .*val: \['class7'\]\);"):
        fit(folder_data(tree, val_size=None), tmp_path)
