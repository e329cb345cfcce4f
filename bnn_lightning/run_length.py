"""The run's length for the lr schedules that need it, taken from the trainer.

:class:`~bnn_lightning.BNNClassifier` builds its schedule with :func:`build_scheduler`: the
schedules of :mod:`bnn_lightning.schedules` read what is left of the fit from the
:class:`RunLength` they are built in, so no config states a step count. The module saves the
fit's length in its checkpoints and :func:`check_resumed_length` refuses a resume whose run has
another length (the schedule in the checkpoint would end too early or too late).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Literal

from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, MultiStepLR
from torch.optim.lr_scheduler import OneCycleLR as TorchOneCycleLR

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

__all__ = [
    "RunLength",
    "build_scheduler",
    "check_resumed_length",
    "decay_milestones",
    "resolve_total_steps",
    "trainer_run_length",
    "warn_unreached_milestones",
]

_CURRENT: ContextVar[RunLength | None] = ContextVar("bnn_lightning_run_length", default=None)


class RunLength:
    """The run's length in scheduler steps, for the schedules built inside ``with RunLength(...)``.

    Args:
        compute: Returns the length; called once, when a schedule first asks (so a run whose
            schedule does not need it never computes it).
    """

    def __init__(self, compute: Callable[[], int]) -> None:
        self._compute = compute
        self._value: int | None = None
        self._token: Token[RunLength | None] | None = None

    @property
    def used(self) -> bool:
        """True once a schedule has read the length."""
        return self._value is not None

    def get(self) -> int:
        """The length (computed on first use)."""
        if self._value is None:
            value = int(self._compute())
            if value < 1:
                raise ValueError(f"The run has {value} scheduler steps left; nothing to schedule.")
            self._value = value
        return self._value

    def __enter__(self) -> RunLength:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)


def trainer_run_length(trainer: Trainer, interval: Literal["epoch", "step"]) -> int:
    """The whole fit's length in scheduler steps: optimizer steps or epochs.

    Optimizer steps are ``trainer.estimated_stepping_batches`` (devices, gradient accumulation,
    ``limit_train_batches`` and ``max_steps`` included); epochs are ``max_epochs``, or as many
    as ``max_steps`` reaches.
    """
    if interval == "epoch" and trainer.max_steps == -1 and (trainer.max_epochs or -1) > 0:
        return int(trainer.max_epochs)  # type: ignore[arg-type]
    steps = trainer.estimated_stepping_batches
    if not math.isfinite(steps):
        raise ValueError(
            "The lr schedule needs the run's length, but the run has no end; set "
            "trainer.max_epochs or trainer.max_steps."
        )
    if interval == "step":
        return int(steps)
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ValueError(
            "scheduler_interval=epoch needs epochs of known length; set trainer.max_epochs, or "
            "use scheduler_interval=step."
        )
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    return math.ceil(steps / per_epoch)


def build_scheduler(
    factory: Callable[[Optimizer], LRScheduler],
    optimizer: Optimizer,
    trainer: Trainer | None,
    interval: Literal["epoch", "step"],
) -> tuple[LRScheduler, int | None]:
    """``factory(optimizer)``, with what is left of the fit as the length of its schedule.

    Returns:
        The scheduler, and the fit's whole length in scheduler steps when the schedule used it
        (None otherwise, or without a trainer).
    """
    if trainer is None:
        return factory(optimizer), None
    done = trainer.global_step if interval == "step" else trainer.current_epoch
    whole: list[int] = []

    def run_length() -> int:  # computed once, for the schedule and the milestone check
        if not whole:
            whole.append(trainer_run_length(trainer, interval))
        return whole[0]

    with RunLength(lambda: run_length() - done) as length:
        scheduler = factory(optimizer)
        if isinstance(scheduler, TorchOneCycleLR) and scheduler.total_steps != length.get():
            raise ValueError(
                f"torch's OneCycleLR has total_steps={scheduler.total_steps} but the run has "
                f"{length.get()} steps; use bnn_lightning.OneCycleLR, which takes the run's length "
                "from the trainer."
            )
    warn_unreached_milestones(scheduler, run_length, interval)
    return scheduler, whole[0] if length.used else None


def decay_milestones(scheduler: LRScheduler) -> list[int]:
    """The absolute milestones of a step decay (:class:`~bnn_lightning.WarmupMultiStepLR`,
    torch's ``MultiStepLR``); empty for other schedules."""
    if isinstance(scheduler, MultiStepLR):
        return sorted(scheduler.milestones)
    return list(getattr(scheduler, "decay_milestones", []))


def warn_unreached_milestones(
    scheduler: LRScheduler, run_length: Callable[[], int], interval: Literal["epoch", "step"]
) -> None:
    """One warning when step-decay milestones lie at or past the end of the run (``run_length()``
    scheduler steps): the lr never decays there (a recipe's epochs, e.g. CIFAR-100's 150, 250,
    320, on a shorter run). The length is only computed for a step decay."""
    milestones = decay_milestones(scheduler)
    if not milestones:
        return
    try:
        whole = run_length()
    except ValueError:  # a run without an end: every milestone may come
        return
    late = [m for m in milestones if m >= whole]
    if late:
        unit = "optimizer steps" if interval == "step" else "epochs"
        rank_zero_warn(
            f"lr milestones {late} are at or past the end of the run ({whole} {unit}): the lr "
            f"never decays there; scale the milestones to the run's length, or lengthen the run."
        )


def check_resumed_length(saved: int | None, current: int | None, interval: str) -> None:
    """A resumed schedule was built for a run of ``saved`` steps; this run must be as long."""
    if saved is None or current is None or saved == current:
        return
    unit = "optimizer steps" if interval == "step" else "epochs"
    raise ValueError(
        f"The checkpoint's lr schedule spans {saved} {unit} but this run has {current} "
        "(max_epochs, max_steps, limit_train_batches, accumulate_grad_batches, devices or the "
        "data changed); resume with the run's settings, or start a new run from it with "
        "model.init_from."
    )


def resolve_total_steps(total_steps: int | None, schedule: str) -> int:
    """``total_steps`` if given (it must agree with the run's), else the run's length."""
    run = _CURRENT.get()
    if total_steps is None:
        if run is None:
            raise ValueError(
                f"{schedule} needs the run's length: let BNNClassifier build it (the trainer "
                "gives the length), or pass total_steps outside a fit."
            )
        return run.get()
    if run is not None and total_steps != run.get():
        raise ValueError(
            f"{schedule} total_steps={total_steps} but the run has {run.get()} scheduler steps; "
            "remove total_steps from the config: the length comes from the trainer."
        )
    if total_steps < 1:
        raise ValueError(f"{schedule} total_steps={total_steps} must be >= 1.")
    return total_steps
