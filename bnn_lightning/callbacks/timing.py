"""Where a run's wall time goes: start-up, data, training, validation.

The ``bnn`` CLI adds :class:`PhaseTimes` to every ``fit`` and prints its breakdown on the last
line, e.g. ``wall time 9m12s (start-up 9s, data 14s, training 8m22s, validation 21s, other 6s)``:

* start-up: from the process's start (``psutil``) to ``Trainer.fit``: imports, the config, the
  network, the ``threads: auto`` sample;
* data: from ``fit`` to the end of ``setup``: the DataModule's setup (archive extraction, the
  decode into the in-memory cache) and the loggers;
* training: the training epochs without the validations inside them;
* validation: every validation loop (sanity check included);
* other: the rest (the data loaders, the optimizer, the checkpoints, the teardown).
"""

from __future__ import annotations

import time

import psutil
from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["PhaseTimes", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``9m12s``, or ``14s`` under a minute."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


class PhaseTimes(Callback):
    """Wall-clock seconds of each phase of a ``fit`` (see the module docstring).

    Call :meth:`fit_started` just before ``Trainer.fit`` (the CLI does); :meth:`phases` after it.
    """

    def __init__(self) -> None:
        self.process_start = psutil.Process().create_time()
        self.marks: dict[str, float] = {}
        self.validation = 0.0
        self._validation_start: float | None = None

    def fit_started(self) -> None:
        self.marks = {"fit": time.time()}
        self.validation = 0.0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.marks.setdefault("fit", time.time())
        self.marks["setup"] = time.time()  # the DataModule's setup runs before the callbacks'

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.marks["train_start"] = time.time()
        self.marks["validation_at_train_start"] = self.validation

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.marks["train_end"] = time.time()
        self.marks["validation_at_train_end"] = self.validation

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation_start = time.time()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._validation_start is not None:
            self.validation += time.time() - self._validation_start
            self._validation_start = None

    def phases(self, end: float | None = None) -> dict[str, float]:
        """Seconds per phase up to ``end`` (default now), and ``total`` from the process start."""
        end = time.time() if end is None else end
        fit = self.marks.get("fit", end)
        setup = self.marks.get("setup", fit)
        train = 0.0
        if "train_start" in self.marks:
            train_end = self.marks.get("train_end", end)
            inside = self.marks.get("validation_at_train_end", self.validation)
            inside -= self.marks["validation_at_train_start"]
            train = train_end - self.marks["train_start"] - inside
        total = end - self.process_start
        out = {
            "start-up": fit - self.process_start,
            "data": setup - fit,
            "training": train,
            "validation": self.validation,
        }
        out["other"] = max(0.0, total - sum(out.values()))
        out["total"] = total
        return out

    def describe(self, end: float | None = None) -> str:
        """``9m12s (start-up 9s, data 14s, training 8m22s, validation 21s, other 6s)``."""
        phases = self.phases(end)
        total = phases.pop("total")
        parts = ", ".join(f"{name} {format_seconds(s)}" for name, s in phases.items())
        return f"{format_seconds(total)} ({parts})"
