"""Training on a few hundred real CIFAR-10 JPEGs: loss falls, accuracy beats chance, KD works."""

from __future__ import annotations

import math
import tarfile
from collections import Counter
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from bnn_lightning.data import ImageFolderDataModule
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier

PER_CLASS = 40  # 400 images: 320 train, 80 validation


@pytest.fixture(scope="module")
def cifar_subset(cifar10_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ``PER_CLASS`` JPEGs of every class, as a ``cifar10-jpeg/train/<class>`` tree."""
    root = tmp_path_factory.mktemp("cifar_subset")
    counts: Counter[str] = Counter()
    with tarfile.open(cifar10_archive) as tar:
        for member in tar:
            label = Path(member.name).parent.name
            if member.isfile() and counts[label] < PER_CLASS:
                counts[label] += 1
                tar.extract(member, root, filter="data")
    assert len(counts) == 10 and set(counts.values()) == {PER_CLASS}
    return root


def datamodule(root: Path, cache: Path) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        str(root), cache_dir=str(cache), pipeline="cifar", image_size=16, val_size=80,
        batch_size=32, num_workers=0, in_memory=True,
    )  # fmt: skip


def small_net(mode: str = "binary") -> BinaryResNet:
    return BinaryResNet("resnet18", num_classes=10, stem="cifar", width=8, mode=mode)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.logged: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def trainer(tmp_path: Path, callbacks: list[L.Callback], **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path, callbacks=callbacks, **kwargs,
    )  # fmt: skip


def test_binary_resnet_learns_real_images(cifar_subset, tmp_path):
    """100 steps of a fully binary ResNet-18 (width 8) on 320 real images."""
    recorder = LossRecorder()
    module = BNNClassifier(small_net(), optimizer=partial(torch.optim.Adam, lr=2e-3))
    fit = trainer(tmp_path, [recorder], max_steps=100)
    fit.fit(module, datamodule(cifar_subset, tmp_path / "cache"))
    first, last = recorder.losses[:10], recorder.losses[-10:]
    assert sum(last) / 10 < 0.9 * sum(first) / 10, (first, last)
    accuracy = float(fit.callback_metrics["train/acc_top1"])  # the last epoch, 320 images
    assert accuracy > 0.2, accuracy  # chance is 0.1; its std over 320 images is ~0.017
    assert {"val/loss", "val/acc_top1", "val/acc_top5"} <= set(fit.callback_metrics)


def test_distillation_terms_are_logged_and_finite(cifar_subset, tmp_path):
    """A teacher checkpoint path feeds KL, refinery, attention transfer; center loss on top."""
    stage1 = BNNClassifier(small_net("binary_activations"))
    teacher_run = trainer(tmp_path, [], max_steps=3, limit_val_batches=0)
    teacher_run.fit(stage1, datamodule(cifar_subset, tmp_path / "cache"))
    path = tmp_path / "teacher.ckpt"
    teacher_run.save_checkpoint(path)

    recorder = LossRecorder()
    module = BNNClassifier(
        small_net(), teacher=str(path), kd_weight=0.4, kd_temperature=4.0, refinery_weight=0.3,
        feature_pairs={"stages.2": "stages.2", "stages.3": "stages.3"}, feature_weight=10.0,
        center_weight=0.01,
    )  # fmt: skip
    trainer(tmp_path, [recorder], max_steps=4, limit_val_batches=1).fit(
        module, datamodule(cifar_subset, tmp_path / "cache")
    )
    assert module.teacher is not None and not module.teacher.training
    parts = ("loss", "loss_ce", "loss_kd", "loss_refinery", "loss_feature", "loss_center")
    for logged in recorder.logged:
        values = {p: logged[f"train/{p}"] for p in parts}
        assert all(math.isfinite(v) for v in values.values()), values
        assert values["loss_kd"] > 0 and values["loss_feature"] > 0
    assert not any("teacher" in k for k in module.state_dict())
