"""6. A non-finite loss stops training with a message naming the step and the last good
checkpoint, before the optimizer steps on it (``NonFiniteGuard``, on by default).

Tried: NaN images in a batch (checked every step, or every 2nd step), with and without a
checkpoint written before, with the default guard and with one configured in the trainer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from reliability_helpers import tensor_loader, tiny_module, tiny_trainer
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
        f"Training loss is nan at step 2 (epoch 0, batch 2); training stopped before the "
        f"optimizer step: resume from {last} (ckpt_path) with a lower lr, or fix the data."
    )
    saved = read_checkpoint(last)["state_dict"]
    for name, value in module.named_parameters():  # the optimizer never stepped on the NaN
        assert torch.isfinite(value).all() and torch.equal(value, saved[name]), name
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert sum(isinstance(c, NonFiniteGuard) for c in trainer.callbacks) == 1


def test_6_without_a_checkpoint_yet_and_with_a_configured_guard(tmp_path: Path) -> None:
    guard = NonFiniteGuard(check_every_n_steps=1)
    trainer = tiny_trainer(tmp_path, callbacks=[guard])
    with pytest.raises(NonFiniteLossError, match=r"at step 0 .*no checkpoint was saved yet"):
        trainer.fit(tiny_module(), poisoned_loader(bad_batch=0))
    assert [c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)] == [guard]


def test_6_check_every_n_steps_skips_the_batches_in_between(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[NonFiniteGuard(check_every_n_steps=2)])
    with pytest.raises(NonFiniteLossError, match=re.escape("at step 2 (epoch 0, batch 2)")):
        trainer.fit(tiny_module(), poisoned_loader(bad_batch=1))  # batch 1 unchecked, NaN spreads
    with pytest.raises(ValueError, match="check_every_n_steps=0 must be >= 1"):
        NonFiniteGuard(check_every_n_steps=0)
