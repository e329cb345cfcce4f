"""``export_checkpoint`` on a checkpoint that Lightning wrote while training a BNNClassifier."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Trainer
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.export import export_checkpoint, load_packed, read_manifest
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier


def test_trained_checkpoint_exports_with_identical_logits(tmp_path: Path) -> None:
    module = BNNClassifier(BinaryResNet("resnet18", 10, stem="cifar", width=8), num_classes=10)
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    trainer = Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    report = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "model.bnn")
    net = module.net.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_packed(report.path)(x), net(x))
    assert report.packed_layers == 16 and report.file_bytes < report.fp32_bytes / 4
    assert read_manifest(report.path)["extras"]["checkpoint"] == "last.ckpt"
