"""``ActivationCurriculum``: progressive activations (ReLU -> leaky clip -> clamp -> sign)."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from bnn_lightning.checkpoints import is_plain
from bnn_lightning.layers import set_quantizers
from bnn_lightning.module import BNNClassifier
from bnn_lightning.quantizers import QuantizerSpec, get_quantizer

__all__ = ["ActivationCurriculum"]


class ActivationCurriculum(Callback):
    """Set the input quantizer of every binary layer by epoch.

    A pre-training trick of the HolmesShuan collection: start from ReLU, replace it by the leaky
    clip, then by ``clamp(-1, 1)``, and finally by sign, so the network approaches binary
    activations gradually. Before the first listed epoch the net keeps its own activations.

    .. code-block:: yaml

        - class_path: bnn_lightning.callbacks.ActivationCurriculum
          init_args: {schedule: {0: relu, 10: leaky_clip, 20: clamp, 30: ste_sign}}

    Args:
        schedule: ``{first_epoch: quantizer spec}`` (names from ``bnn_lightning.QUANTIZERS``).
    """

    def __init__(self, schedule: dict[int, QuantizerSpec]) -> None:
        if not schedule:
            raise ValueError("ActivationCurriculum needs a schedule, e.g. {0: relu, 10: ste_sign}.")
        for spec in schedule.values():
            get_quantizer(spec)  # fail at construction on an unknown name
        self.schedule = dict(sorted(schedule.items()))
        self.current: int | None = None

    def _apply(self, trainer: Trainer, pl_module: LightningModule) -> None:
        started = [e for e in self.schedule if e <= trainer.current_epoch]
        if not started or started[-1] == self.current:
            return
        self.current = started[-1]
        spec = self.schedule[self.current]
        set_quantizers(pl_module, input_quantizer=spec)  # the teacher is not a submodule
        if is_plain(spec) and isinstance(pl_module, BNNClassifier):
            pl_module.update_net_config(activation_quantizer=spec)
        rank_zero_info(f"ActivationCurriculum: epoch {trainer.current_epoch}, activation {spec}.")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply(trainer, pl_module)
