"""5. Bad data is an error naming the file or folder and the fix, or handled as documented.

A data root given to ``bnn`` that does not exist is one ``error:`` line naming it (no download
of other data); the quickstart's CIFAR-10 download stands in only where no root was given
(``$BNN_DATA_DIR`` unset). Tried inside a ``fit``: a missing root, an empty class folder, a
truncated JPEG and one that is not a JPEG at all (an error naming the file, or dropped with
``skip_corrupt``), greyscale, greyscale+alpha, RGBA, palette and 16-bit images (converted to
RGB), and a ``val/`` class that ``train/`` lacks (an error listing it).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability_helpers import ROOT, tiny_module, tiny_trainer

from bnn_lightning.cli import BNNCLI, main
from bnn_lightning.data import CIFAR10DataModule, CorruptImageError, ImageFolderDataModule

QUICKSTART = ROOT / "configs" / "cifar10" / "quickstart.yaml"


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


def cli_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The ``error:`` lines of a ``bnn`` configuration that must stop before instantiating."""
    with pytest.raises(SystemExit) as stop:
        BNNCLI(args=args, run=False)
    assert stop.value.code == 2
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.mark.parametrize("given", ["flag", "env"])
def test_5_a_given_data_root_that_is_missing_is_one_error_line_naming_it(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in --data.init_args.root, or $BNN_DATA_DIR set to a folder without the archive:
    no fall back to torchvision's CIFAR-10 download (other data than asked for)."""
    args = ["--config", str(QUICKSTART), "--trainer.default_root_dir", str(tmp_path)]
    typo = tmp_path / "typo"
    if given == "flag":
        args += ["--data.init_args.root", str(typo / "cifar10-jpeg-train.tar.gz")]
        root = str(typo / "cifar10-jpeg-train.tar.gz")
    else:
        monkeypatch.setenv("BNN_DATA_DIR", str(typo))
        root = f"$BNN_DATA_DIR/cifar10-jpeg-train.tar.gz ({typo / 'cifar10-jpeg-train.tar.gz'})"
    assert cli_errors(args, capsys) == [
        f"error: data.init_args.root {root} does not exist; point it at the dataset's folder or "
        "archive (--data.init_args.root)."
    ]


def test_5_only_an_unset_bnn_data_dir_falls_back_and_the_package_sets_no_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BNN_DATA_DIR", raising=False)
    args = ["--config", str(QUICKSTART), "--trainer.default_root_dir", str(tmp_path)]
    cli = BNNCLI(args=[*args, "--model.net.init_args.width", "8"], run=False)
    assert isinstance(cli.datamodule, CIFAR10DataModule) and cli.datamodule.download
    assert cli_errors([*args, "--data_fallback", "null"], capsys) == [
        "error: data.init_args.root $BNN_DATA_DIR/cifar10-jpeg-train.tar.gz uses $BNN_DATA_DIR, "
        "which is not set; set it to the folder holding the data, or pass --data.init_args.root."
    ]
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(QUICKSTART), "--print_config"])
    assert "BNN_DATA_DIR" not in os.environ  # `bnn` itself knows no data folder


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
