"""``bnn predict``: one CSV row per image, checked against the module's own logits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import CONFIGS, tiny_data_args, tiny_run_args
from PIL import Image

from bnn_lightning.cli import BNNCLI, main
from bnn_lightning.data.images import load_rgb
from bnn_lightning.data.predict import ImagePaths, predict_transform, sample_name
from bnn_lightning.tta import tta_logits

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

QUICKSTART = CONFIGS / "cifar10" / "quickstart.yaml"
DATA = "bnn_lightning.ImageFolderDataModule"
FP32 = ["--trainer.precision", "32-true"]


def quick_args(tmp: Path) -> list[str]:
    return ["--config", str(QUICKSTART), *tiny_data_args(DATA, tmp), *tiny_run_args(tmp), *FP32]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose ``checkpoints/last.ckpt`` is 2 training steps of the quickstart."""
    tmp = tmp_path_factory.mktemp("predict")
    steps = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"]
    main(["fit", *quick_args(tmp), *steps])
    assert (tmp / "run" / "checkpoints" / "last.ckpt").is_file()
    return tmp


def write_photos(folder: Path) -> list[str]:
    """6 images of several sizes and modes: 4 loose, 2 in a sub-folder; plus a text file."""
    rng = np.random.default_rng(1)
    files = []
    for i, (size, mode) in enumerate([((40, 48), "RGB"), ((32, 32), "L"), ((64, 50), "RGBA")] * 2):
        place = folder / ("cats" if i >= 4 else "") / f"img{i}.{'jpg' if mode == 'RGB' else 'png'}"
        place.parent.mkdir(parents=True, exist_ok=True)
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8).squeeze()
        Image.fromarray(pixels, mode).save(place)
        files.append(str(place))
    (folder / "notes.txt").write_text("not an image")
    return sorted(files)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_predict_a_folder_writes_each_image_with_the_modules_probabilities(
    trained: Path, tmp_path: Path
) -> None:
    files = write_photos(tmp_path / "photos")
    args = [*quick_args(trained), "--ckpt_path", "last"]
    cli = BNNCLI(args=["predict", *args, "--data.init_args.predict_root", str(tmp_path / "photos")])
    rows = read_rows(trained / "run" / "predictions" / "predictions.csv")
    assert [row["path"] for row in rows] == files

    model, classes = cli.model.eval(), cli.datamodule.classes
    assert model.training is False and model.net.fc.out_features == len(classes) == 10
    transform = predict_transform(cli.datamodule)
    images = torch.stack([transform(load_rgb(f)) for f in files])
    with torch.no_grad():  # the batches of the run (batch_size 4), so the sums add up the same
        batches = [images[i : i + 4] for i in range(0, len(files), 4)]
        logits = torch.cat([tta_logits(model.net, x, "flip_shift") for x in batches])
    assert model.tta == "flip_shift"  # the quickstart's views: predict averages them too
    top_p, top_i = logits.softmax(1).topk(5, dim=1)
    for row, p, i in zip(rows, top_p.tolist(), top_i.tolist(), strict=True):
        names = [classes[c] for c in i]
        assert row["class"] == names[0] and row["top5_classes"].split("|") == names
        assert float(row["probability"]) == pytest.approx(p[0], abs=1e-6)
        found = [float(v) for v in row["top5_probabilities"].split("|")]
        assert found == pytest.approx(p, abs=1e-6) and found == sorted(found, reverse=True)


def test_predict_without_a_folder_writes_the_test_split(trained: Path) -> None:
    """The tiny tree's ``val/`` serves ``test``: its 10 files, one per class."""
    args = [*quick_args(trained), "--ckpt_path", "last", "--data.init_args.in_memory", "false"]
    main(["predict", *args])
    rows = read_rows(trained / "run" / "predictions" / "predictions.csv")
    expected = sorted(str(p) for p in (trained / "tree" / "val").rglob("*.png"))
    assert sorted(row["path"] for row in rows) == expected
    assert {row["class"] for row in rows} <= {f"c{k}" for k in range(10)}


def test_image_paths_finds_images_at_any_depth(tmp_path: Path) -> None:
    files = write_photos(tmp_path)
    dataset = ImagePaths(tmp_path, lambda img: torch.tensor(img.size))
    assert dataset.paths == files and len(dataset) == 6
    size, index = dataset[0]
    assert index == 0 and size.tolist() == list(Image.open(files[0]).size)
    assert sample_name(dataset, 3) == files[3]


def test_image_paths_refuses_a_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        ImagePaths(tmp_path / "nope", lambda img: img)
    assert str(err.value) == (
        f"predict_root {tmp_path / 'nope'} is not a folder; set data.init_args.predict_root to a "
        "folder of images."
    )
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"holds no images \(\.jpg .*\.png"):
        ImagePaths(tmp_path, lambda img: img)


def test_sample_name_follows_subsets_and_names_arrays() -> None:
    class Files(torch.utils.data.Dataset):
        samples = [("a.png", 0), ("b.png", 1), ("c.png", 0)]

        def __len__(self) -> int:
            return 3

    subset = torch.utils.data.Subset(Files(), [2, 0])
    assert sample_name(subset, 0) == "c.png" and sample_name(subset, 1) == "a.png"
    arrays = torch.utils.data.TensorDataset(torch.zeros(3, 1))
    assert sample_name(arrays, 2) == "TensorDataset[2]"
