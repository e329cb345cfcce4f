"""Learning-rate schedules built from torch's own schedulers, configurable from YAML.

Both classes are ``SequentialLR``: an optional warm-up (``ConstantLR`` or ``LinearLR``) followed
by the main schedule. Milestones and lengths are absolute (counted from the first epoch or step
of the schedule, warm-up included). The HolmesShuan collection's settings:

.. code-block:: yaml

    # CIFAR-100: x0.2 at 150, 250, 320 (end at 350)
    lr_scheduler: {class_path: bnn_lightning.WarmupMultiStepLR,
                   init_args: {milestones: [150, 250, 320], gamma: 0.2}}
    # ImageNet: x0.1 at 40, 60, 70 (end at 75)
    lr_scheduler: {class_path: bnn_lightning.WarmupMultiStepLR,
                   init_args: {milestones: [40, 60, 70], gamma: 0.1}}
    # one-stage: 5 warm-up epochs at lr 1e-3, then 4e-3 (optimizer lr 4e-3)
    lr_scheduler: {class_path: bnn_lightning.WarmupMultiStepLR,
                   init_args: {milestones: [40, 60, 70], warmup_epochs: 5, warmup_factor: 0.25}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

__all__ = ["WarmupCosineLR", "WarmupMode", "WarmupMultiStepLR"]

WarmupMode = Literal["constant", "linear"]


def _warmup(optimizer: Optimizer, iters: int, mode: WarmupMode, factor: float) -> LRScheduler:
    """``factor * lr`` for ``iters`` steps (constant), or a linear ramp from it up to ``lr``."""
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"warmup_factor={factor} must be in (0, 1]; e.g. 0.25 for 1e-3 -> 4e-3.")
    if mode == "constant":
        return ConstantLR(optimizer, factor=factor, total_iters=iters)
    if mode == "linear":
        return LinearLR(optimizer, start_factor=factor, end_factor=1.0, total_iters=iters)
    raise ValueError(f"warmup_mode={mode!r} is not 'constant' or 'linear'.")


def _chain(
    optimizer: Optimizer, warmup: int, mode: WarmupMode, factor: float, main: LRScheduler
) -> tuple[list[LRScheduler], list[int]]:
    if warmup < 0:
        raise ValueError(f"The warm-up length must be >= 0, got {warmup}.")
    if warmup == 0:
        return [main], []
    return [_warmup(optimizer, warmup, mode, factor), main], [warmup]


class WarmupMultiStepLR(SequentialLR):
    """Optional warm-up, then the lr times ``gamma`` at each milestone (HolmesShuan's step decay).

    Args:
        optimizer: The wrapped optimizer.
        milestones: Epochs (absolute, warm-up included) where the lr is multiplied by ``gamma``.
        gamma: Decay factor (HolmesShuan collection: 0.2 on CIFAR-100, 0.1 on ImageNet).
        warmup_epochs: Length of the warm-up (0 = none).
        warmup_mode: ``constant``: ``warmup_factor * lr`` during the warm-up; ``linear``: a ramp
            from ``warmup_factor * lr`` reaching ``lr`` at ``warmup_epochs``.
        warmup_factor: Fraction of the lr at the start of the warm-up.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_epochs: int = 0,
        warmup_mode: WarmupMode = "constant",
        warmup_factor: float = 0.25,
    ) -> None:
        milestones = list(milestones)
        if milestones != sorted(milestones) or any(m <= warmup_epochs for m in milestones):
            raise ValueError(
                f"milestones={milestones} must increase and exceed warmup_epochs={warmup_epochs}."
            )
        main = MultiStepLR(optimizer, [m - warmup_epochs for m in milestones], gamma)
        schedulers, switch = _chain(optimizer, warmup_epochs, warmup_mode, warmup_factor, main)
        super().__init__(optimizer, schedulers, switch)


class WarmupCosineLR(SequentialLR):
    """Optional warm-up, then cosine annealing that reaches ``eta_min`` at ``max_iters``.

    For short runs that should end at lr ~ 0; counts epochs or optimizer steps depending on the
    module's ``scheduler_interval``.

    Args:
        optimizer: The wrapped optimizer.
        max_iters: Total length in epochs or steps, warm-up included.
        warmup_iters: Length of the warm-up (0 = none).
        warmup_mode: ``constant`` or ``linear`` (see :class:`WarmupMultiStepLR`).
        warmup_factor: Fraction of the lr at the start of the warm-up.
        eta_min: The final learning rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_iters: int,
        warmup_iters: int = 0,
        warmup_mode: WarmupMode = "linear",
        warmup_factor: float = 0.1,
        eta_min: float = 0.0,
    ) -> None:
        if max_iters <= warmup_iters:
            raise ValueError(f"max_iters={max_iters} must exceed warmup_iters={warmup_iters}.")
        main = CosineAnnealingLR(optimizer, T_max=max_iters - warmup_iters, eta_min=eta_min)
        schedulers, switch = _chain(optimizer, warmup_iters, warmup_mode, warmup_factor, main)
        super().__init__(optimizer, schedulers, switch)
