"""The quickstart config trains on each device (``precision: auto``: ``bf16-mixed`` where the
device has native bf16), and its checkpoint exports.

The quickstart's own network (a fully binary ResNet-10 of width 32), optimizer, schedule,
precision and in-memory data path, through the CLI, with ``trainer.accelerator`` set to the
device, on a small tree of learnable images (one colour per class plus noise).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from device_helpers import QUICKSTART, LossRecorder, data_args, quiet_run_args
from lightning import Trainer
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.cli import BNNCLI
from bnn_lightning.export import export_checkpoint, load_packed
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier
from bnn_lightning.precision import auto_precision

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def test_quickstart_network_trains_in_its_auto_precision(
    device: torch.device, color_tree: Path, tmp_path: Path
) -> None:
    recorder = LossRecorder()
    args = ["--config", str(QUICKSTART), *data_args(color_tree, tmp_path / "cache", 32, 16)]
    args += [*quiet_run_args(tmp_path / "run", device.type), "--trainer.max_epochs", "15"]
    args += ["--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false"]
    cli = BNNCLI(args=args, run=False)
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    assert cli.trainer.global_step == 30
    assert cli.trainer.precision == auto_precision(device.type)  # bf16-mixed on Ampere and newer
    assert {b[0] for b in recorder.batches} == {device.type}
    assert all(p.device.type == device.type for p in cli.model.parameters())
    first, last = recorder.losses[:5], recorder.losses[-5:]
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
    assert sum(last) < 0.7 * sum(first), (first, last)


def test_checkpoint_trained_on_the_device_exports_with_equal_logits_on_cpu(
    device: torch.device, tmp_path: Path
) -> None:
    """Trained on the device in bf16-mixed and channels_last; exported and loaded on the CPU."""
    net = BinaryResNet("resnet18", 10, stem="cifar", width=8, pad_value=1.0)
    module = BNNClassifier(net.to(memory_format=torch.channels_last), num_classes=10)
    data = TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    trainer = Trainer(
        accelerator=device.type, devices=1, precision="bf16-mixed", max_steps=4, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=8))
    assert next(module.parameters()).device.type == device.type
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    report = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "model.bnn")
    packed = load_packed(report.path)
    # the trained net in the packed net's memory format: another format, another conv kernel
    trained = module.net.to("cpu", memory_format=torch.contiguous_format).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(packed(x), trained(x))
    assert all(t.device.type == "cpu" for t in packed.state_dict().values())
