"""``last.ckpt`` on its own schedule, whatever the best checkpoint monitors.

The ``bnn`` command's ``ModelCheckpoint`` keeps the best ``val/acc_top1``. Lightning's
``save_last`` writes ``last.ckpt`` only together with a save of that callback, and a
step-triggered save (``every_n_train_steps``) waits for the monitored metric: before the first
validation ``val/acc_top1`` does not exist, so the save is put off to the end of the validation,
where a callback that saves at the end of the training epoch never makes it up. With
``every_n_train_steps: 2`` on a 10-step epoch the first file came at step 12; on ImageNet a crash
in the first epoch (hours) lost everything.

:func:`split_last_checkpoint` gives ``last.ckpt`` a ``ModelCheckpoint`` of its own that monitors
nothing (Lightning's own callback, public arguments only), on the best one's triggers: every
``every_n_train_steps`` steps from step N on, every ``train_time_interval``, or at the end of
every ``every_n_epochs``-th epoch (the default: every epoch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["split_last_checkpoint"]

_TRIGGERS = (
    "every_n_train_steps",
    "train_time_interval",
    "every_n_epochs",
    "save_on_train_epoch_end",
    "save_weights_only",
    "verbose",
)


def split_last_checkpoint(
    best: ModelCheckpoint, options: Mapping[str, Any]
) -> ModelCheckpoint | None:
    """Move ``last.ckpt`` from ``best`` to an unmonitored ``ModelCheckpoint``, or None.

    Args:
        best: The monitored callback; its ``save_last`` is turned off when it was on.
        options: Its constructor arguments (the CLI's ``checkpoint`` config), for the triggers.

    Returns:
        A callback writing ``<best.dirpath>/last.ckpt`` (put it after ``best``, so that
        ``trainer.checkpoint_callback`` stays the best one), or None when ``best`` had no
        ``save_last``.
    """
    if not best.save_last:
        return None
    best.save_last = False
    return ModelCheckpoint(
        dirpath=best.dirpath,
        filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
        monitor=None,
        save_top_k=1,  # unmonitored: the newest, under one name
        enable_version_counter=False,  # a rerun rewrites last.ckpt
        **{key: options[key] for key in _TRIGGERS if options.get(key) is not None},
    )
