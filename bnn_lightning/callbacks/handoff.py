"""``StageHandoff``: the two-stage recipe (Martinez et al., Real-to-Binary) inside one ``fit``.

Stage 1 trains with binary activations and real weights; at ``epoch`` the same weights continue
as a fully binary network with a fresh optimizer and schedule (the stage-2 lr and weight decay),
colour jitter off, and optionally the stage-1 network as a frozen teacher.

.. code-block:: yaml

    trainer:
      callbacks:
        - class_path: bnn_lightning.callbacks.StageHandoff
          init_args: {epoch: 350, lr: 2.0e-4, weight_decay: 0.0, teacher_from_stage1: true,
                      loss_weights: {kd_weight: 0.5}}
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LRSchedulerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from bnn_lightning.checkpoints import is_plain
from bnn_lightning.layers import Mode, get_modes, set_mode
from bnn_lightning.module import BNNClassifier
from bnn_lightning.quantizers import QuantizerSpec

__all__ = ["StageHandoff"]


class StageHandoff(Callback):
    """Switch a :class:`~bnn_lightning.BNNClassifier` to stage 2 at the start of ``epoch``.

    The switch survives a resume: a checkpoint written after it re-applies it (and restores the
    stage-1 teacher's weights) before the optimizer and its state are rebuilt.

    Args:
        epoch: First epoch of stage 2 (0-based: ``epoch=350`` after 350 stage-1 epochs).
        lr: Stage-2 learning rate for every group (None keeps the optimizer's).
        weight_decay: Stage-2 weight decay (the HolmesShuan collection: 0).
        mode: Mode of the binary layers in stage 2 (see :func:`bnn_lightning.set_mode`).
        activation: Activation quantizer spec of stage 2.
        weight: Weight quantizer spec of stage 2.
        teacher_from_stage1: A frozen copy of the stage-1 net becomes the distillation teacher.
        loss_weights: Loss weights for stage 2, e.g. ``{kd_weight: 0.5, center_weight: 0.01}``.
        lr_scheduler: Scheduler factory for stage 2 (None restarts the module's own); one that
            needs the run's length spans what is left of the run.
        color_jitter: Colour jitter in stage 2 (the HolmesShuan collection turns it off).
    """

    def __init__(
        self,
        epoch: int,
        lr: float | None = None,
        weight_decay: float | None = 0.0,
        mode: Mode = "binary",
        activation: QuantizerSpec = "ste_sign",
        weight: QuantizerSpec = "magnitude_aware_sign",
        teacher_from_stage1: bool = False,
        loss_weights: dict[str, float] | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        color_jitter: bool = False,
    ) -> None:
        if epoch < 1:
            raise ValueError(f"StageHandoff epoch={epoch} must be >= 1 (stage 1 needs an epoch).")
        self.epoch = epoch
        self.lr, self.weight_decay = lr, weight_decay
        self.mode, self.activation, self.weight = mode, activation, weight
        self.teacher_from_stage1 = teacher_from_stage1
        self.loss_weights = dict(loss_weights or {})
        self.lr_scheduler = lr_scheduler
        self.color_jitter = color_jitter
        self.done = False
        self._teacher: nn.Module | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(epoch=self.epoch)

    def _switch(self, module: BNNClassifier, teacher_state: dict[str, Tensor] | None) -> None:
        """Stage-2 settings on the module; the optimizer is rebuilt by the caller."""
        if self.teacher_from_stage1:
            self._teacher = module.snapshot_net()
            if teacher_state is not None:
                self._teacher.load_state_dict(teacher_state)
            module.set_teacher(self._teacher)
        set_mode(module.net, self.mode, self.activation, self.weight)
        quantizers = {"activation_quantizer": self.activation, "weight_quantizer": self.weight}
        module.update_net_config(
            mode=self.mode, **{k: v for k, v in quantizers.items() if is_plain(v)}
        )
        if self.loss_weights:
            module.set_loss_weights(**self.loss_weights)
        module.lr, module.weight_decay = self.lr, self.weight_decay
        if self.lr_scheduler is not None:
            module.lr_scheduler_factory = self.lr_scheduler
        self.done = True

    def _set_color_jitter(self, trainer: Trainer) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        set_jitter = getattr(datamodule, "set_color_jitter", None)
        if set_jitter is not None:
            set_jitter(self.color_jitter)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.done or trainer.current_epoch < self.epoch:
            return
        if not isinstance(pl_module, BNNClassifier):
            raise TypeError(f"StageHandoff needs a BNNClassifier, got {type(pl_module).__name__}.")
        self._switch(pl_module, None)
        trainer.strategy.setup_optimizers(trainer)
        self._set_color_jitter(trainer)
        modes = dict(get_modes(pl_module.net))
        rank_zero_info(f"StageHandoff at epoch {trainer.current_epoch}: layers now {modes}.")

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Re-apply the switch when resuming from a stage-2 checkpoint."""
        state = checkpoint.get("callbacks", {}).get(self.state_key, {})
        if state.get("done") and isinstance(pl_module, BNNClassifier):
            self._switch(pl_module, state.get("teacher"))
            self._set_color_jitter(trainer)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"done": self.done}
        if self._teacher is not None:
            state["teacher"] = self._teacher.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict.get("done", False))
