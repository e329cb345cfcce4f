"""DDP on one device converts every BatchNorm of the net to the preset's synchronized one.

On CUDA, ``configs/trainer/ddp.yaml`` (``strategy: ddp``, ``sync_batchnorm: true``) with
``devices: 1``: every BatchNorm trains as PyTorch's ``SyncBatchNorm`` over NCCL. PyTorch's
``SyncBatchNorm`` refuses CPU tensors, so the CPU variant runs ``configs/trainer/ddp_cpu.yaml``,
whose ``GlobalBatchNormSync`` plugin does the same over gloo.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from device_helpers import CONFIGS, QUICKSTART, data_args, quiet_run_args
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnn_lightning.cli import BNNCLI
from bnn_lightning.sync_batchnorm import GlobalBatchNorm

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

PRESET = {
    "cuda": ("ddp.yaml", nn.SyncBatchNorm, "nccl"),
    "cpu": ("ddp_cpu.yaml", GlobalBatchNorm, "gloo"),
}


class NormsInTraining(Callback):
    """The BatchNorm classes of the net, the backend and the world size at the first step."""

    def __init__(self) -> None:
        self.norms: list[type] = []
        self.backend, self.world_size = "", 0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int
    ) -> None:
        if not self.norms:
            net = getattr(pl_module, "net")  # noqa: B009 (BNNClassifier's net)
            self.norms = [type(m) for m in net.modules() if isinstance(m, _BatchNorm)]
            self.backend, self.world_size = dist.get_backend(), dist.get_world_size()


@pytest.mark.usefixtures("restore_environ")
def test_ddp_on_one_device_syncs_every_batchnorm(
    device: torch.device, color_tree: Path, tmp_path: Path
) -> None:
    preset, sync_class, backend = PRESET[device.type]
    args = ["--config", str(QUICKSTART), "--config", str(CONFIGS / "trainer" / preset)]
    args += [*data_args(color_tree, tmp_path / "cache", 16, 16), "--trainer.devices", "1"]
    args += [*quiet_run_args(tmp_path / "run", device.type), "--trainer.max_steps", "2"]
    args += ["--trainer.limit_val_batches", "1", "--model.net.init_args.width", "8"]
    cli = BNNCLI(args=args, run=False)
    before = sum(isinstance(m, _BatchNorm) for m in cli.model.net.modules())
    probe = NormsInTraining()
    cli.trainer.callbacks.append(probe)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert cli.trainer.global_step == 2 and cli.trainer.strategy.root_device.type == device.type
    assert (probe.backend, probe.world_size) == (backend, 1)
    assert before > 0 and len(probe.norms) == before
    assert set(probe.norms) == {sync_class}, probe.norms
