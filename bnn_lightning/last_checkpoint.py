"""The run's two checkpoints: ``last.ckpt`` on its own schedule, whatever the best checkpoint
monitors, and the best checkpoint as the run recorded it.

The ``bnn`` command's ``ModelCheckpoint`` keeps the best ``val/acc_top1``. Lightning's
``save_last`` writes ``last.ckpt`` only together with a save of that callback, and a
step-triggered save (``every_n_train_steps``) waits for the monitored metric: before the first
validation ``val/acc_top1`` does not exist, so the save is put off to the end of the validation,
where a callback that saves at the end of the training epoch never makes it up. With
``every_n_train_steps: 2`` on a 10-step epoch the first file came at step 12; on ImageNet a crash
in the first epoch (hours) lost everything.

:func:`split_last_checkpoint` gives ``last.ckpt`` a :class:`LastCheckpoint` of its own that
monitors nothing, on the best one's triggers: every ``every_n_train_steps`` steps from step N on,
every ``train_time_interval``, or at the end of every ``every_n_epochs``-th epoch (the default:
every epoch); and at the end of training when the triggers left the final step unsaved, so that
``last.ckpt`` of a finished run holds its final weights (what stage 2's ``init_from`` and
``bnn export`` read), not those of up to N - 1 steps before.

:func:`recorded_best` finds the best checkpoint after the run (``bnn export --ckpt_path best``):
the ``best_model_path`` that the monitored callback recorded in the run's newest checkpoint, not
the newest file, which with ``save_top_k > 1`` is any of the kept ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from bnn_lightning.checkpoint_io import read_checkpoint

__all__ = ["LastCheckpoint", "recorded_best", "split_last_checkpoint"]

_TRIGGERS = (
    "every_n_train_steps",
    "train_time_interval",
    "every_n_epochs",
    "save_on_train_epoch_end",
    "save_weights_only",
    "verbose",
)


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` writing ``<dirpath>/last.ckpt`` alone, monitoring nothing;
    it also saves at the end of training when its triggers did not save the final step.

    Args:
        dirpath: The checkpoint folder.
        **triggers: ``every_n_train_steps``, ``train_time_interval``, ``every_n_epochs``, ... of
            ``ModelCheckpoint``.
    """

    def __init__(self, dirpath: str | Path | None = None, **triggers: Any) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,  # unmonitored: the newest, under one name
            enable_version_counter=False,  # a rerun rewrites last.ckpt
            **triggers,
        )
        self._saved_step: int | None = None

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._saved_step = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save the final step unless it was saved, or nothing trained (``fast_dev_run`` too)."""
        super().on_train_end(trainer, pl_module)
        if getattr(trainer, "fast_dev_run", False) or trainer.global_step in (0, self._saved_step):
            return
        self.best_model_path = os.path.join(
            self.dirpath or trainer.default_root_dir,
            self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION,
        )
        trainer.save_checkpoint(self.best_model_path, self.save_weights_only)


def split_last_checkpoint(
    best: ModelCheckpoint, options: Mapping[str, Any]
) -> LastCheckpoint | None:
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
    triggers = {key: options[key] for key in _TRIGGERS if options.get(key) is not None}
    return LastCheckpoint(best.dirpath, **triggers)


def _recorded_state(callback: ModelCheckpoint, states: Mapping[str, Any]) -> Mapping[str, Any]:
    """``callback``'s state among a checkpoint's ``callbacks`` (by its state key, else the one
    ModelCheckpoint that monitored the same metric, when the triggers were changed since)."""
    if callback.state_key in states:
        return states[callback.state_key]
    same = [
        state
        for key, state in states.items()
        if key.startswith("ModelCheckpoint") and state.get("monitor") == callback.monitor
    ]
    return same[0] if len(same) == 1 else {}


def recorded_best(callback: ModelCheckpoint) -> Path:
    """The best checkpoint of ``callback``'s run: the ``best_model_path`` it recorded in
    ``last.ckpt`` (else in the newest checkpoint) of its folder.

    A recorded path that no longer exists (the run folder was moved) is looked up by its name in
    the folder.

    Raises:
        FileNotFoundError: No checkpoint in the folder, none recorded, or the file is gone.
    """
    folder = Path(callback.dirpath or ".")
    last = folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    found = sorted(folder.glob(f"*{ModelCheckpoint.FILE_EXTENSION}"), key=os.path.getmtime)
    record = last if last.is_file() else found[-1] if found else None
    if record is None:
        raise FileNotFoundError(
            f"No checkpoint in {folder}; train first or pass a checkpoint path."
        )
    state = _recorded_state(callback, read_checkpoint(record).get("callbacks", {}))
    recorded = state.get("best_model_path")
    if not recorded:
        raise FileNotFoundError(
            f"{record} records no best checkpoint of {callback.monitor}; pass a checkpoint path."
        )
    for path in (Path(recorded), folder / Path(recorded).name):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"The best checkpoint {recorded} recorded in {record} is gone; pass a checkpoint path."
    )
