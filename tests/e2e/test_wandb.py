"""W&B from YAML: offline without an API key, metrics / config / summary in the run folder, CSV
fallback when disabled.

wandb >= 0.20 has no Python reader for its ``run-<id>.wandb`` transaction log, so
:func:`wandb_records` reads it here: a LevelDB-style log of 32 KiB blocks after a 7-byte file
header (``:W&B``, magic 0xBEE1, version), each record chunk behind a 7-byte header (crc32, length,
type: 1 full, 2 first, 3 middle, 4 last), each full record a protobuf ``Record``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb
from fakes import CONFIGS, allow_fake_cifar, tiny_data_args, tiny_run_args
from lightning.pytorch.loggers import CSVLogger
from wandb.proto import wandb_internal_pb2

from bnn_lightning.cli import BNNCLI, main
from bnn_lightning.loggers import wandb_has_api_key

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

BLOCK, HEADER = 32768, 7


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of a ``run-<id>.wandb`` file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, chunks = HEADER, b""
    while pos + HEADER <= len(data):
        space = BLOCK - pos % BLOCK
        if space < HEADER:  # the block's tail is padding
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunks += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def logged(path: Path) -> tuple[dict[str, list], set[str]]:
    """History values by key, and the config keys, of one offline run file."""
    history: dict[str, list] = {}
    config: set[str] = set()
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
        elif kind == "config":
            config |= {item.key or "/".join(item.nested_key) for item in record.config.update}
    return history, config


def cifar100_args(tmp: Path, logger_dir: bool = True) -> list[str]:
    data = tiny_data_args("bnn_lightning.CIFAR100DataModule", tmp)
    run = tiny_run_args(tmp, logger_dir=logger_dir)
    return ["--config", str(CONFIGS / "cifar100" / "base.yaml"), *data, *run]


def no_wandb_credentials(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp))


def test_fit_without_api_key_logs_offline_into_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_fake_cifar(monkeypatch)
    no_wandb_credentials(monkeypatch, tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    steps = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"]
    steps += ["--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1"]
    main(["fit", *cifar100_args(tmp_path, logger_dir=False), *steps])
    wandb.teardown()  # wait for the W&B service to write everything to the run folder
    assert os.environ["WANDB_MODE"] == "offline"
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = logged(run_file)
    assert len(history["train/loss"]) == 3, sorted(history)
    assert history["lr-Adam/decay"] == [1e-3] * 4  # LearningRateMonitor: each step, and epoch start
    assert all(0.0 <= acc <= 1.0 for acc in history["val/acc_top1"])
    assert {"config", "model_summary/bops", "model_summary/flops"} <= config


def test_disabled_wandb_becomes_a_csv_logger_in_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_fake_cifar(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = BNNCLI(args=cifar100_args(tmp_path, logger_dir=False), run=False)
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert Path(cli.trainer.logger.save_dir) == tmp_path / "run"


def test_api_key_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_wandb_credentials(monkeypatch, tmp_path)
    assert not wandb_has_api_key()
    netrc = tmp_path / "no-netrc"
    netrc.write_text("machine api.wandb.ai login user password secret\n")
    netrc.chmod(0o600)
    assert wandb_has_api_key()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_has_api_key()
