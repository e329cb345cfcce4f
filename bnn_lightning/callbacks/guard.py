"""``NonFiniteGuard``: stop at the first NaN or infinite loss, before it reaches the weights.

The check runs before ``backward``, so the optimizer never steps on a non-finite loss and the
checkpoints written so far stay good (in memory, that forward pass has already updated the
BatchNorm running statistics); the error names the step and the newest checkpoint to resume
from. It costs one scalar read per step (and, with several processes, one tiny all-reduce
so that every rank stops together). ``BNNClassifier`` adds it by default; configure it yourself
only to change ``check_every_n_steps``:

.. code-block:: yaml

    trainer:
      callbacks:
        - class_path: bnn_lightning.callbacks.NonFiniteGuard
          init_args: {check_every_n_steps: 10}
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "last_checkpoint"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def last_checkpoint(trainer: Trainer) -> Path | None:
    """The most recently written checkpoint of the trainer's ``ModelCheckpoint`` callbacks."""
    paths = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            names = (callback.last_model_path, callback.best_model_path)
            paths |= {Path(p) for p in (*names, getattr(callback, "_last_checkpoint_saved", ""))}
    existing = [p for p in paths if str(p) not in ("", ".") and p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime_ns) if existing else None


class NonFiniteGuard(Callback):
    """Raise :class:`NonFiniteLossError` when the training loss is not finite.

    Args:
        check_every_n_steps: Check one batch in this many (1: every batch).
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise ValueError(
                f"check_every_n_steps={check_every_n_steps} must be >= 1; 1 checks every step."
            )
        self.check_every_n_steps = check_every_n_steps
        self._batch_idx = 0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: Tensor
    ) -> None:
        if self._batch_idx % self.check_every_n_steps:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        value = f"{loss.item()}" if bad and loss.numel() == 1 else "not finite"
        rank = f", rank {trainer.global_rank}" if trainer.world_size > 1 else ""
        if not bad:
            value, rank = "not finite on another rank", ""
        checkpoint = last_checkpoint(trainer)
        then = (
            f"resume from {checkpoint} (ckpt_path)"
            if checkpoint
            else "start again (no checkpoint yet)"
        )
        raise NonFiniteLossError(
            f"Training loss is {value} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {self._batch_idx}{rank}); stopped before the "
            f"optimizer step: lower the lr or fix the data, then {then}."
        )
