"""The callbacks and plugins the ``bnn`` CLI adds unless a config has its own."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from fakes import CONFIGS, tiny_data_args, tiny_run_args
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor

from bnn_lightning.checkpoint_io import AtomicCheckpointIO
from bnn_lightning.cli import BNNCLI, main
from bnn_lightning.sync_batchnorm import GlobalBatchNormSync

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

QUICKSTART = CONFIGS / "cifar10" / "quickstart.yaml"
DATA = "bnn_lightning.ImageFolderDataModule"


def quick_args(tmp: Path) -> list[str]:
    return ["--config", str(QUICKSTART), *tiny_data_args(DATA, tmp), *tiny_run_args(tmp)]


def monitors(cli: BNNCLI) -> list[LearningRateMonitor]:
    return [c for c in cli.trainer.callbacks if isinstance(c, LearningRateMonitor)]


def test_lr_monitor_and_atomic_checkpoint_io_are_defaults(tmp_path: Path) -> None:
    cli = BNNCLI(args=quick_args(tmp_path), run=False)
    assert len(monitors(cli)) == 1
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO


def test_a_config_with_its_own_plugins_keeps_the_atomic_io(tmp_path: Path) -> None:
    """``ddp_cpu.yaml`` sets ``plugins: [GlobalBatchNormSync]``; the default is added to it."""
    ddp = ["--config", str(CONFIGS / "trainer" / "ddp_cpu.yaml"), "--trainer.devices", "1"]
    cli = BNNCLI(args=[*quick_args(tmp_path), *ddp], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert isinstance(cli.trainer._accelerator_connector._layer_sync, GlobalBatchNormSync)


def test_a_configured_checkpoint_io_or_lr_monitor_is_not_doubled(tmp_path: Path) -> None:
    own_io = "--trainer.plugins=lightning.fabric.plugins.TorchCheckpointIO"
    own_monitor = "--trainer.callbacks+=LearningRateMonitor"
    cli = BNNCLI(args=[*quick_args(tmp_path), own_io, own_monitor], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO
    assert len(monitors(cli)) == 1


def test_no_lr_monitor_without_a_logger(tmp_path: Path) -> None:
    """LearningRateMonitor refuses a trainer without a logger."""
    cli = BNNCLI(args=[*quick_args(tmp_path), "--trainer.logger", "false"], run=False)
    assert monitors(cli) == []


def test_fit_logs_the_lr_of_every_parameter_group(tmp_path: Path) -> None:
    """The quickstart's one-cycle schedule per step, for both groups (norms and biases apart)."""
    steps = ["--trainer.max_steps", "8", "--trainer.limit_val_batches", "1"]
    steps += ["--trainer.log_every_n_steps", "1", "--model.no_decay_norm_bias", "true"]
    main(["fit", *quick_args(tmp_path), *steps])
    (metrics,) = (tmp_path / "run").rglob("metrics.csv")
    with metrics.open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("train/lr/decay")]
    decay = [float(row["train/lr/decay"]) for row in rows]
    no_decay = [float(row["train/lr/no_decay"]) for row in rows]
    assert len(decay) == 8 and decay == no_decay
    assert decay[0] == pytest.approx(4e-3 / 10) and max(decay) == pytest.approx(4e-3)  # one-cycle
    config = yaml.safe_load((metrics.parent / "config.yaml").read_text())
    paths = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in paths
    plugins = [p["class_path"] for p in config["trainer"]["plugins"]]
    assert plugins == ["bnn_lightning.AtomicCheckpointIO"]
