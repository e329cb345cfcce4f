"""Configuration checks: a mistake in a config becomes one sentence naming the key and the fix.

Each check runs where the value is first known (the module's ``__init__``, ``setup``, loading a
checkpoint), so a typo costs seconds, not a failed run hours later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer

__all__ = [
    "STATE_FREE_ARGS",
    "check_data_classes",
    "check_positive",
    "check_teacher_classes",
    "class_count",
    "make_optimizer",
    "net_config_mismatch",
]

STATE_FREE_ARGS = frozenset(
    {"mode", "activation_quantizer", "weight_quantizer", "pad_value", "bn_momentum"}
)
"""Net arguments that leave the state dict unchanged (a stage-2 net may differ in them)."""


def check_positive(key: str, value: float | None) -> None:
    """Raise unless ``value`` is None or a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{key}={value} must be a positive number; set {key} to e.g. 1e-3.")


def make_optimizer(factory: Callable[[Any], Optimizer], groups: Sequence[dict]) -> Optimizer:
    """``factory(groups)``, with an error naming the optimizer setting when a group's lr <= 0."""
    try:
        optimizer = factory(groups)
    except ValueError as err:
        raise ValueError(
            f"The optimizer rejected its settings ({err}); fix model.optimizer.init_args "
            "(lr must be > 0)."
        ) from err
    for i, group in enumerate(optimizer.param_groups):
        lr = group.get("lr")
        if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr > 0):
            raise ValueError(
                f"Optimizer group {group.get('name', i)!r} has lr={lr}; set "
                "model.optimizer.init_args.lr (or model.lr) to a positive number."
            )
    return optimizer


def class_count(module: nn.Module) -> int | None:
    """Classes a classifier predicts: its ``num_classes``, else its last ``nn.Linear``'s outputs."""
    init_args = getattr(module, "init_args", None)
    own = getattr(module, "num_classes", None)
    if own is None and isinstance(init_args, Mapping):
        own = init_args.get("num_classes")
    if isinstance(own, int):
        return own
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def check_teacher_classes(teacher: nn.Module, num_classes: int, source: str) -> None:
    """Raise when the teacher ``source`` predicts a different number of classes than the student."""
    count = class_count(teacher)
    if count is not None and count != num_classes:
        raise ValueError(
            f"The teacher {source} predicts {count} classes but the student {num_classes}; use a "
            f"teacher trained on the same {num_classes} classes (model.init_args.teacher)."
        )


def check_data_classes(num_classes: int, datamodule: Any) -> None:
    """Raise when the datamodule's ``num_classes`` disagrees with the model's."""
    data = getattr(datamodule, "num_classes", None)
    if isinstance(data, int) and data != num_classes:
        raise ValueError(
            f"model num_classes={num_classes} but the data has {data} classes; set the model's "
            f"num_classes to {data} (the CLI links it from data.num_classes)."
        )


def net_config_mismatch(recorded: Any, net: nn.Module) -> list[str]:
    """``key=saved (this net: value)`` for each shape-changing net argument that differs.

    Args:
        recorded: A checkpoint's ``hyper_parameters["net"]`` (``{"class_path", "init_args"}``).
        net: The network the weights are meant for (its ``init_args``).
    """
    saved = recorded.get("init_args") if isinstance(recorded, Mapping) else None
    own = getattr(net, "init_args", None)
    if not isinstance(saved, Mapping) or not isinstance(own, Mapping):
        return []
    diffs = []
    saved_class = str(recorded.get("class_path", "")).rpartition(".")[2]
    if saved_class and saved_class != type(net).__name__:
        diffs.append(f"class_path={recorded['class_path']!r} (this net: {type(net).__name__})")
    for key in sorted(set(saved) & set(own) - STATE_FREE_ARGS):
        if saved[key] != own[key]:
            diffs.append(f"{key}={saved[key]!r} (this net: {own[key]!r})")
    return diffs
