"""DataModules on tiny fake trees: splits, archives, global batch, MixUp, jitter, bad inputs."""

from __future__ import annotations

import logging
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets import cifar as cifar_module

from bnn_lightning.data import (
    BatchAugment,
    BatchMix,
    BatchNormalize,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CorruptImageError,
    ImageFolderDataModule,
    TensorImageDataset,
)
from bnn_lightning.data import images as images_module
from bnn_lightning.data.archive import extract_archive, find_split_root

CLASSES = ("ant", "bee", "cat")


def write_image(path: Path, size: int = 20, mode: str = "RGB", value: int | None = None) -> None:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if value is not None:
        pixels[:] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)


def make_tree(root: Path, n_train: int = 8, n_val: int = 4, val: bool = True, **kw) -> Path:
    """``root/train/<class>/`` (+ ``root/val``) with JPEG, greyscale PNG and RGBA PNG images."""
    modes = [("RGB", "jpg"), ("L", "png"), ("RGBA", "png")]
    for split, n in [("train", n_train), ("val", n_val)][: 2 if val else 1]:
        for c in CLASSES:
            for i in range(n):
                mode, ext = modes[i % 3]
                write_image(root / split / c / f"{i}.{ext}", mode=mode, **kw)
    return root


def make_archive(tree: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=arcname)
    return archive


def folder_dm(root: Path, **kwargs) -> ImageFolderDataModule:
    defaults = dict(
        pipeline="cifar", image_size=16, padding=2, batch_size=6, num_workers=0,
        cache_dir=str(root.parent / "cache"),
    )  # fmt: skip
    return ImageFolderDataModule(str(root), **{**defaults, **kwargs})


# --- ImageFolder: layout, splits, archives ----------------------------------------------------


def test_folder_num_classes_before_setup_and_val_folder_split(tmp_path: Path) -> None:
    dm = folder_dm(make_tree(tmp_path / "tree"))
    assert dm.num_classes == 3 and dm.classes == list(CLASSES)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 12, 12)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.float32
    assert targets.dtype == torch.int64 and set(targets.tolist()) <= {0, 1, 2}
    val_images, _ = next(iter(dm.val_dataloader()))  # greyscale and RGBA came out as RGB
    assert val_images.shape == (6, 3, 16, 16)


def test_root_and_cache_dir_expand_environment_variables(tmp_path: Path, monkeypatch) -> None:
    make_tree(tmp_path / "tree")
    monkeypatch.setenv("TOY_DATA", str(tmp_path))
    dm = ImageFolderDataModule("$TOY_DATA/tree", cache_dir="${TOY_DATA}/cache")
    assert dm.root == tmp_path / "tree" and dm.cache_dir == tmp_path / "cache"
    assert CIFAR10DataModule(root="$TOY_DATA/c10").root == tmp_path / "c10"


def test_folder_carves_seeded_validation_split(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", val=False)
    a, b, c = (folder_dm(root, val_size=6, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup("fit")
    assert (len(a.train_set), len(a.val_set)) == (18, 6)
    assert a.val_set.indices == b.val_set.indices != c.val_set.indices
    assert not set(a.val_set.indices) & set(a.train_set.indices)
    default = folder_dm(root)  # no val/: 10% of train/
    default.setup("fit")
    assert len(default.val_set) == 2 and default.test_set is default.val_set


def test_folder_val_size_with_val_folder_keeps_val_for_test(tmp_path: Path) -> None:
    dm = folder_dm(make_tree(tmp_path / "tree"), val_size=0.25)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 6, 12)


def test_archive_is_listed_extracted_once_and_root_found(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", val=False)
    archive = make_archive(tree, tmp_path / "toy-train.tar.gz", "toy/nested")
    dm = folder_dm(archive, val_size=3)
    assert dm.num_classes == 3  # read from the archive listing, nothing extracted yet
    assert not (tmp_path / "cache").exists()
    dm.prepare_data()
    extracted = tmp_path / "cache" / "toy-train"
    assert find_split_root(extracted) == extracted / "toy" / "nested"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["toy-train"]  # no temp folder
    stamp = extracted.stat().st_mtime_ns
    dm.prepare_data()
    assert extracted.stat().st_mtime_ns == stamp
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (21, 3)
    assert folder_dm(archive, subdir="toy/nested").num_classes == 3


def test_interrupted_extraction_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    archive = make_archive(make_tree(tmp_path / "tree"), tmp_path / "toy.tgz", "toy")
    cache = tmp_path / "cache"

    def crash(self, path, **kwargs):
        (Path(path) / "partial").mkdir()
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(tarfile.TarFile, "extractall", crash)
        with pytest.raises(OSError, match="disk full"):
            extract_archive(archive, cache)
    assert list(cache.iterdir()) == []
    assert (extract_archive(archive, cache) / "toy" / "train").is_dir()


def test_in_memory_folder_decodes_once_to_a_cached_tensor(tmp_path: Path, monkeypatch) -> None:
    root = make_tree(tmp_path / "tree", val=False)
    dm = folder_dm(root, in_memory=True, val_size=6)
    dm.prepare_data()
    cached = list((tmp_path / "cache" / "tensors").glob("tree_train-16px-*.pt"))
    assert len(cached) == 1
    monkeypatch.setattr(images_module, "_decode_all", None)  # a second decode would fail
    again = folder_dm(root, in_memory=True, val_size=6)
    again.prepare_data()
    again.setup("fit")
    assert again.device_images.images.shape == (24, 3, 16, 16)
    images, targets = again.transform_batch(next(iter(again.train_dataloader())), train=True)
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.float32
    assert targets.dtype == torch.int64
    val_images, _ = again.transform_batch(next(iter(again.val_dataloader())), train=False)
    assert val_images.shape == (6, 3, 16, 16)


def test_device_path_gives_the_collate_paths_batch_for_the_same_generator_state(
    tmp_path: Path,
) -> None:
    """The device-side path (rows gathered from the resident tensor after the transfer) against
    the per-sample path (the loader stacks the uint8 images, then the batch augmentation,
    normalization and MixUp run), from the same generator states: the same batch."""
    dm = folder_dm(make_tree(tmp_path / "tree", val=False), in_memory=True, val_size=6,
                   rotation=15.0, mixup_alpha=0.3)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert dm.device_images is not None and dm.mix is not None
    rows, targets = next(iter(dm.train_dataloader()))
    assert rows.dtype == torch.int64 and rows.shape == (6,)
    augment_state = dm.device_images.augment.generator.get_state()
    mix_state = dm.mix.generator.get_state()
    images, soft_targets = dm.transform_batch((rows, targets), train=True)

    samples = TensorImageDataset(dm.device_images.images, dm.train_set.dataset.targets)
    stacked, collated = next(iter(DataLoader(samples, batch_size=6, sampler=rows.tolist())))
    augment, mix = BatchAugment(padding=2, rotation=15.0), BatchMix(3, mixup_alpha=0.3)
    augment.generator.set_state(augment_state)
    mix.generator.set_state(mix_state)
    expected = mix(BatchNormalize(dm.mean, dm.std)(augment(stacked)), collated)
    assert torch.equal(images, expected[0]) and torch.equal(soft_targets, expected[1])
    assert not torch.equal(augment(stacked), stacked)  # it did augment


def striped_tree(root: Path, n: int = 4) -> Path:
    """``root/train/<class>/`` with 30x60 images: red left quarter, green middle, blue right."""
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :15, 0] = pixels[:, 15:45, 1] = pixels[:, 45:, 2] = 255
    for c in CLASSES:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(pixels).save(root / "train" / c / f"{i}.png")
    return root


def test_in_memory_imagenet_pipeline_keeps_whole_images_for_random_resized_crop(
    tmp_path: Path,
) -> None:
    """The cache holds each image whole, its shorter side resized to int(16 * 1.25) = 20, so
    RandomResizedCrop reaches the red and blue sides; evaluation center-crops 16 (all green)."""
    dm = folder_dm(
        striped_tree(tmp_path / "tree"), pipeline="imagenet", in_memory=True, val_size=3,
        test_resize_ratio=1.25, color_jitter=False, lighting=0.0, mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_set.dataset[0][0].shape == (3, 20, 40)
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.shape == (3, 3, 16, 16)
    assert (val_images[:, 1] > 0.9).all() and (val_images[:, [0, 2]] < 0.1).all()
    crops = torch.cat([images for _ in range(10) for images, _ in dm.train_dataloader()])
    assert crops.shape[1:] == (3, 16, 16)
    red = (crops[:, 0] > 0.9).flatten(1).any(1)
    blue = (crops[:, 2] > 0.9).flatten(1).any(1)
    assert red.any() and blue.any()  # a center square of the image holds neither


# --- global batch size, MixUp, colour jitter ---------------------------------------------------


def test_global_batch_size_is_divided_by_world_size(tmp_path: Path) -> None:
    dm = folder_dm(make_tree(tmp_path / "tree"), batch_size=6)
    dm.trainer = SimpleNamespace(world_size=2)  # type: ignore[assignment]
    dm.setup("fit")
    assert dm.per_device_batch_size == 3
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 3
    dm.trainer = SimpleNamespace(world_size=4)  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"batch_size=6 .* not divisible by the 4 devices"):
        dm.setup("fit")


def test_mixup_cutmix_only_on_training_batches(tmp_path: Path) -> None:
    dm = folder_dm(make_tree(tmp_path / "tree"), mixup_alpha=0.2, cutmix_alpha=1.0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=False, world_size=1)  # type: ignore[assignment]
    assert dm.on_after_batch_transfer(batch, 0)[1].dtype == torch.int64
    dm.trainer = SimpleNamespace(training=True, world_size=1)  # type: ignore[assignment]
    images, targets = dm.on_after_batch_transfer(batch, 0)
    assert images.shape == batch[0].shape
    assert targets.shape == (6, 3) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(6))


def test_set_color_jitter_reaches_persistent_workers(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", n_train=2, n_val=1, value=128)  # flat grey images
    dm = folder_dm(
        root, pipeline="imagenet", lighting=0.0, num_workers=1, persistent_workers=True,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    grey = torch.full((6, 3, 16, 16), 128 / 255)
    jittered, _ = next(iter(loader))  # crops and flips leave a flat image flat; jitter does not
    assert not torch.allclose(jittered, grey, atol=1e-3)
    dm.set_color_jitter(False)
    plain, _ = next(iter(loader))
    torch.testing.assert_close(plain, grey, atol=2e-3, rtol=0)
    CIFAR10DataModule(root=str(tmp_path)).set_color_jitter(False)  # no jitter there: a no-op


# --- bad inputs ---------------------------------------------------------------------------------


def test_missing_root_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ImageFolder root .*nowhere does not exist"):
        folder_dm(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="No train/ folder found"):
        folder_dm(tmp_path)
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"data\.zip is a file but not a \.tar\.gz/"):
        folder_dm(tmp_path / "data.zip")


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    (root / "train" / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Class folder .*train/dog holds no images"):
        folder_dm(root)


def test_val_classes_must_match_train(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    write_image(root / "val" / "dog" / "0.jpg")
    dm = folder_dm(root)
    with pytest.raises(ValueError, match=r"tree/val differ from .*tree/train .*val: \[.dog.\]"):
        dm.setup("fit")


@pytest.mark.parametrize("in_memory", [False, True])
def test_corrupt_image_is_named_or_skipped(tmp_path: Path, in_memory: bool, caplog) -> None:
    root = make_tree(tmp_path / "tree")
    bad = root / "train" / "bee" / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    dm = folder_dm(root, in_memory=in_memory, batch_size=25)  # one batch holds every image
    with pytest.raises(CorruptImageError, match=r"Cannot decode image .*broken\.jpg"):
        dm.prepare_data()
        dm.setup("fit")
        next(iter(dm.train_dataloader()))
    skipping = folder_dm(root, in_memory=in_memory, skip_corrupt=True)
    with caplog.at_level(logging.WARNING):
        skipping.prepare_data()
        skipping.setup("fit")
    assert len(skipping.train_set) == 24
    assert "Skipped 1 corrupt image(s)" in caplog.text


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_images_of_any_mode_load_as_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    write_image(path, mode=mode)
    img = images_module.load_rgb(str(path))
    assert img.mode == "RGB" and img.size == (20, 20)


def test_unknown_pipeline_and_bad_val_size(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    with pytest.raises(ValueError, match="Unknown pipeline 'vit'"):
        folder_dm(root, pipeline="vit")
    dm = folder_dm(root, val_size=24)
    with pytest.raises(ValueError, match="val_size=24 leaves no training"):
        dm.setup("fit")


# --- CIFAR on a fake pickle tree ------------------------------------------------------------------


def write_fake_cifar(root: Path, cls: type[CIFAR10], n: int = 20) -> None:
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if cls is CIFAR10 else "fine_labels"
    rng = np.random.default_rng(0)
    for name, _ in cls.train_list + cls.test_list:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [i % 10 for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    key = cls.meta["key"]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({key: [f"c{i}" for i in range(100)]}))


@pytest.mark.parametrize(
    ("module", "dataset", "classes"),
    [(CIFAR10DataModule, CIFAR10, 10), (CIFAR100DataModule, CIFAR100, 100)],
)
@pytest.mark.parametrize("in_memory", [False, True])
def test_cifar_on_fake_pickles(
    tmp_path: Path, monkeypatch, module, dataset, classes, in_memory
) -> None:
    write_fake_cifar(tmp_path, dataset)
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args: True)  # fake files and md5s
    dm = module(root=str(tmp_path), val_size=10, batch_size=8, num_workers=0, in_memory=in_memory)
    assert dm.num_classes == classes
    dm.prepare_data()
    dm.setup("fit")
    n_train = 20 * len(dataset.train_list)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (n_train - 10, 10, 20)
    images, targets = dm.transform_batch(next(iter(dm.train_dataloader())), train=True)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert targets.dtype == torch.int64
    test_images, _ = dm.transform_batch(next(iter(dm.test_dataloader())), train=False)
    assert test_images.shape == (8, 3, 32, 32)
    first_test_image = torch.from_numpy(dataset(str(tmp_path), train=False).data[0])
    expected = first_test_image.permute(2, 0, 1) / 255 - torch.tensor(dm.mean)[:, None, None]
    torch.testing.assert_close(test_images[0], expected / torch.tensor(dm.std)[:, None, None])


def test_cifar_missing_root_explains_how_to_get_the_data(tmp_path: Path) -> None:
    dm = CIFAR100DataModule(root=str(tmp_path / "none"))
    with pytest.raises(
        FileNotFoundError, match=r"cifar-100-python; set download: true .*ImageFolder"
    ):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match="CIFAR100 not found"):
        dm.setup("fit")
