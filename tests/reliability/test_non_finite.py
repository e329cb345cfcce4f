"""6. A non-finite loss stops training with a message naming the step and the last good
checkpoint, before the optimizer steps on it (``NonFiniteGuard``, on by default).

Tried: NaN images in a batch (checked every step, or every 2nd step), with and without a
checkpoint written before, with the default guard and with one configured in the trainer, and
under 2-process DDP with the NaN on one rank only.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from reliability_helpers import HERE, ROOT, bnn_env, tensor_loader, tiny_module, tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.callbacks import NonFiniteGuard, NonFiniteLossError
from bnn_lightning.checkpoint_io import read_checkpoint


def poisoned_loader(bad_batch: int) -> DataLoader:
    """16 images in batches of 4; the images of batch ``bad_batch`` are NaN."""
    images, labels = tensor_loader().dataset.tensors
    images = images.clone()
    images[4 * bad_batch : 4 * bad_batch + 4] = float("nan")
    return DataLoader(TensorDataset(images, labels), batch_size=4)


def test_6_nan_loss_names_the_step_and_the_last_good_checkpoint(tmp_path: Path) -> None:
    module = tiny_module()  # the guard comes from BNNClassifier.configure_callbacks
    every_step = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[every_step], enable_checkpointing=True)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(module, poisoned_loader(bad_batch=2))
    last = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    assert str(err.value) == (
        "Training loss is nan at step 2 (epoch 0, batch 2); stopped before the optimizer step: "
        f"lower the lr or fix the data, then resume from {last} (ckpt_path)."
    )
    saved = read_checkpoint(last)["state_dict"]
    for name, value in module.named_parameters():  # the optimizer never stepped on the NaN
        assert torch.isfinite(value).all() and torch.equal(value, saved[name]), name
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert sum(isinstance(c, NonFiniteGuard) for c in trainer.callbacks) == 1


def test_6_without_a_checkpoint_yet_and_with_a_configured_guard(tmp_path: Path) -> None:
    guard = NonFiniteGuard(check_every_n_steps=1)
    trainer = tiny_trainer(tmp_path, callbacks=[guard])
    with pytest.raises(
        NonFiniteLossError, match=r"at step 0 .*then start again \(no checkpoint yet\)\.$"
    ):
        trainer.fit(tiny_module(), poisoned_loader(bad_batch=0))
    assert [c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)] == [guard]


def test_6_check_every_n_steps_skips_the_batches_in_between(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[NonFiniteGuard(check_every_n_steps=2)])
    with pytest.raises(NonFiniteLossError, match=re.escape("at step 2 (epoch 0, batch 2)")):
        trainer.fit(tiny_module(), poisoned_loader(bad_batch=1))  # batch 1 unchecked, NaN spreads
    with pytest.raises(ValueError, match="check_every_n_steps=0 must be >= 1"):
        NonFiniteGuard(check_every_n_steps=0)


@pytest.mark.ddp
def test_6_under_ddp_a_nan_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    """Rank 1's images of step 2 are NaN, rank 0's are fine (BatchNorm not synchronized): both
    stop at step 2 instead of rank 0 waiting for rank 1 in the gradient all-reduce."""
    command = [sys.executable, str(HERE / "ddp_parity.py"), "--devices", "2"]
    command += ["--out", str(tmp_path), "--nan-at-step", "2", "--local-bn"]
    result = subprocess.run(
        command, env=bnn_env(), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        (tmp_path / "error0.txt")
        .read_text()
        .startswith(
            "Training loss is not finite on another rank at step 2 (epoch 0, batch 2); stopped"
        )
    )
    assert (
        (tmp_path / "error1.txt")
        .read_text()
        .startswith("Training loss is nan at step 2 (epoch 0, batch 2, rank 1); stopped")
    )
