"""Callbacks and plugins the ``bnn`` command adds to a run's config unless the config has its own.

They are added to ``trainer.callbacks`` / ``trainer.plugins`` before anything is built, so the
``config.yaml`` saved with the run lists them, and a config that sets a list of its own (e.g.
``plugins: [GlobalBatchNormSync]``) keeps them:

- ``fit``: :class:`~lightning.pytorch.callbacks.LearningRateMonitor` (the lr of every parameter
  group: ``train/lr/decay``, ``train/lr/no_decay``), unless the trainer has
  no logger (``logger: false``) or the config already has one.
- every subcommand: :class:`~bnn_lightning.checkpoint_io.AtomicCheckpointIO`, unless a
  ``CheckpointIO`` plugin (or a strategy with its own ``checkpoint_io``) is configured.
- ``predict``: :class:`~bnn_lightning.prediction.CSVPredictionWriter` (one CSV row per image under
  ``<default_root_dir>/predictions/``), unless the config has a ``BasePredictionWriter``.
"""

from __future__ import annotations

import importlib
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor

from bnn_lightning.checkpoint_io import AtomicCheckpointIO
from bnn_lightning.prediction import CSVPredictionWriter
from bnn_lightning.registry import import_class

__all__ = ["add_defaults"]


def _class_path(cls: type) -> str:
    """The shortest import path of ``cls`` (``lightning.pytorch.callbacks.LearningRateMonitor``)."""
    parts = cls.__module__.split(".")
    for i in range(1, len(parts)):
        module = ".".join(parts[:i])
        if getattr(importlib.import_module(module), cls.__name__, None) is cls:
            return f"{module}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _is_a(item: Any, base: type) -> bool:
    """Whether a config entry (``class_path`` Namespace or object) is a ``base``."""
    if isinstance(item, Namespace) and isinstance(item.get("class_path"), str):
        return import_class(item.class_path, base) is not None
    return isinstance(item, base)


def _entry(cls: type, **init_args: Any) -> Namespace:
    return Namespace(class_path=_class_path(cls), init_args=Namespace(**init_args))


def _has_logger(logger: Any) -> bool:
    return logger is not False and logger != []


def add_defaults(trainer: Namespace, subcommand: str | None) -> None:
    """Add the default callbacks and plugins to the ``trainer`` config of ``subcommand``."""
    callbacks = _as_list(trainer.get("callbacks"))
    monitored = any(_is_a(c, LearningRateMonitor) for c in callbacks)
    if subcommand == "fit" and _has_logger(trainer.get("logger")) and not monitored:
        options = {"logging_interval": None, "log_momentum": False, "log_weight_decay": False}
        callbacks.append(_entry(LearningRateMonitor, **options))
    if subcommand == "predict" and not any(_is_a(c, BasePredictionWriter) for c in callbacks):
        callbacks.append(_entry(CSVPredictionWriter, output_dir=None, top_k=5))
    if callbacks:
        trainer.callbacks = callbacks

    plugins = _as_list(trainer.get("plugins"))
    strategy = trainer.get("strategy")
    own_io = isinstance(strategy, Namespace) and strategy.get("init_args", Namespace()).get(
        "checkpoint_io"
    )
    if not own_io and not any(_is_a(p, CheckpointIO) for p in plugins):
        trainer.plugins = [*plugins, _entry(AtomicCheckpointIO)]
