"""Learning-rate schedules built from torch's own schedulers, configurable from YAML.

Schedules whose shape depends on the run's length (:class:`OneCycleLR`, :class:`LinearDecayLR`,
:class:`WarmupCosineLR`) take it from the trainer: :class:`~bnn_lightning.BNNClassifier` builds
them in ``configure_optimizers`` inside :class:`RunLength`, which counts what is left of the run
in scheduler steps (``trainer.estimated_stepping_batches`` optimizer steps for
``scheduler_interval: step``: devices, gradient accumulation, ``limit_train_batches`` and
``max_steps`` included; epochs for ``scheduler_interval: epoch``). No config states a step
count, so ``--trainer.max_epochs 3``, another batch size or more data keep the same curve,
stretched. A resume restores the schedule from its checkpoint (the same curve); resuming with
a run of another length is an error. :class:`WarmupMultiStepLR` counts absolute epochs.

.. code-block:: yaml

    # One-cycle (Smith & Topin): 15% linear warm-up from lr / 10 to the optimizer's lr, then
    # linear annealing to lr / 1e4 at the last step
    model:
      optimizer: {class_path: torch.optim.Adam, init_args: {lr: 4.0e-3}}
      lr_scheduler:
        class_path: bnn_lightning.OneCycleLR
        init_args: {pct_start: 0.15, anneal_strategy: linear, div_factor: 10.0,
                    final_div_factor: 1000.0}
      scheduler_interval: step
    # Bi-Real Net / ReActNet: lr * (1 - t / T), Adam; per step (or per epoch, as their code)
    lr_scheduler: {class_path: bnn_lightning.LinearDecayLR}
    # 5% linear warm-up, then cosine annealing to 0
    lr_scheduler: {class_path: bnn_lightning.WarmupCosineLR, init_args: {warmup_fraction: 0.05}}
    # CIFAR-100 step decay: x0.2 at epochs 150, 250, 320 (of 350)
    lr_scheduler: {class_path: bnn_lightning.WarmupMultiStepLR,
                   init_args: {milestones: [150, 250, 320], gamma: 0.2}}
    # one-stage: 5 warm-up epochs at lr 1e-3, then 4e-3 (optimizer lr 4e-3)
    lr_scheduler: {class_path: bnn_lightning.WarmupMultiStepLR,
                   init_args: {milestones: [40, 60, 70], warmup_epochs: 5, warmup_factor: 0.25}}

Outside a fit, pass the length yourself: ``OneCycleLR(optimizer, total_steps=1000)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from bnn_lightning.run_length import RunLength, resolve_total_steps

__all__ = [
    "LinearDecayLR",
    "OneCycleLR",
    "RunLength",
    "WarmupCosineLR",
    "WarmupMode",
    "WarmupMultiStepLR",
]

WarmupMode = Literal["constant", "linear"]
AnnealStrategy = Literal["cos", "linear"]


def _anneal(start: float, end: float, pct: float, strategy: AnnealStrategy) -> float:
    """From ``start`` (pct 0) to ``end`` (pct 1), linearly or along half a cosine."""
    if strategy == "linear":
        return start + (end - start) * pct
    return end + (start - end) * (1.0 + math.cos(math.pi * pct)) / 2.0


class _RunLengthLR(LambdaLR):
    """A closed-form factor of the step over the run's ``total_steps``.

    ``total_steps`` is an attribute, so it goes into ``state_dict`` and a resume restores it.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None) -> None:
        self.total_steps = resolve_total_steps(total_steps, type(self).__name__)
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """The lr multiplier at ``step`` (0-based)."""
        raise NotImplementedError


class OneCycleLR(_RunLengthLR):
    """One-cycle policy (Smith & Topin, 2019) over the run's length, peaking at the optimizer's lr.

    The lr rises from ``lr / div_factor`` at step 0 to the optimizer's lr at step
    ``round(pct_start * (T - 1))``, then anneals to ``lr / (div_factor * final_div_factor)`` at
    the run's last step ``T - 1`` (and stays there). The parameters are those of
    :class:`torch.optim.lr_scheduler.OneCycleLR`; the peak is every group's own lr and falls on
    a step, however short the run.

    Args:
        optimizer: The wrapped optimizer; its lr (per group) is the peak.
        pct_start: Fraction of the run spent warming up.
        anneal_strategy: ``cos`` or ``linear``, for both phases.
        div_factor: The first step's lr is ``lr / div_factor``.
        final_div_factor: The last step's lr is ``lr / (div_factor * final_div_factor)``.
        total_steps: The run's length; set by :class:`~bnn_lightning.BNNClassifier` from the
            trainer (leave it out of configs).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        pct_start: float = 0.3,
        anneal_strategy: AnnealStrategy = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        total_steps: int | None = None,
    ) -> None:
        if not 0.0 <= pct_start < 1.0:
            raise ValueError(f"pct_start={pct_start} must be in [0, 1); e.g. 0.15.")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy={anneal_strategy!r} is not 'cos' or 'linear'.")
        if div_factor < 1.0 or final_div_factor < 1.0:
            raise ValueError(
                f"div_factor={div_factor} and final_div_factor={final_div_factor} must be >= 1."
            )
        self.pct_start, self.anneal_strategy = pct_start, anneal_strategy
        self.start_factor = 1.0 / div_factor
        self.final_factor = 1.0 / (div_factor * final_div_factor)
        super().__init__(optimizer, total_steps)

    @property
    def peak_step(self) -> int:
        """The step at which the lr is the optimizer's."""
        return round(self.pct_start * (self.total_steps - 1))

    def factor(self, step: int) -> float:
        last, peak = self.total_steps - 1, self.peak_step
        if step < peak:
            return _anneal(self.start_factor, 1.0, step / peak, self.anneal_strategy)
        if step >= last:
            return self.final_factor if last > peak else 1.0
        return _anneal(1.0, self.final_factor, (step - peak) / (last - peak), self.anneal_strategy)


class LinearDecayLR(_RunLengthLR):
    """Linear decay to 0, as Bi-Real Net and ReActNet train: ``lr * (1 - t / T)``.

    ``t`` counts scheduler steps from 0 and ``T`` is the run's length, so the last step uses
    ``lr / T`` and the lr is 0 when the run ends (Liu et al.'s ``LambdaLR(lambda step: 1.0 -
    step / epochs)``). With ``scheduler_interval: step`` the decay is per optimizer step.

    Args:
        optimizer: The wrapped optimizer.
        total_steps: The run's length; set by :class:`~bnn_lightning.BNNClassifier` from the
            trainer (leave it out of configs).
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None) -> None:
        super().__init__(optimizer, total_steps)

    def factor(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total_steps)


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

    Milestones and lengths are absolute (counted from the schedule's first epoch, warm-up
    included): the recipes' epochs, e.g. CIFAR-100's x0.2 at 150, 250 and 320.

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
        self.decay_milestones = milestones  # absolute, for the run-length check
        main = MultiStepLR(optimizer, [m - warmup_epochs for m in milestones], gamma)
        schedulers, switch = _chain(optimizer, warmup_epochs, warmup_mode, warmup_factor, main)
        super().__init__(optimizer, schedulers, switch)


class WarmupCosineLR(SequentialLR):
    """Optional warm-up, then cosine annealing that reaches ``eta_min`` as the run ends.

    The warm-up lasts ``round(warmup_fraction * T)`` of the run's ``T`` scheduler steps; the
    cosine (:class:`~torch.optim.lr_scheduler.CosineAnnealingLR`) spans the rest, so the last
    step's lr is just above ``eta_min``.

    Args:
        optimizer: The wrapped optimizer.
        warmup_fraction: Fraction of the run spent warming up (0 = none).
        warmup_mode: ``constant`` or ``linear`` (see :class:`WarmupMultiStepLR`).
        warmup_factor: Fraction of the lr at the start of the warm-up.
        eta_min: The final learning rate.
        total_steps: The run's length; set by :class:`~bnn_lightning.BNNClassifier` from the
            trainer (leave it out of configs).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_fraction: float = 0.0,
        warmup_mode: WarmupMode = "linear",
        warmup_factor: float = 0.1,
        eta_min: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction={warmup_fraction} must be in [0, 1); e.g. 0.05.")
        self.total_steps = resolve_total_steps(total_steps, type(self).__name__)
        warmup = min(round(warmup_fraction * self.total_steps), self.total_steps - 1)
        main = CosineAnnealingLR(optimizer, T_max=self.total_steps - warmup, eta_min=eta_min)
        schedulers, switch = _chain(optimizer, warmup, warmup_mode, warmup_factor, main)
        super().__init__(optimizer, schedulers, switch)
