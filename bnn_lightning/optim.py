"""Optimizer parameter groups: weight decay only where it belongs."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

__all__ = ["describe_groups", "parameter_groups"]

_DECAYED = (nn.modules.conv._ConvNd, nn.Linear)


def _split_decay(
    net: nn.Module, no_decay_norm_bias: bool
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weights of conv / linear layers decay; with ``no_decay_norm_bias`` nothing else does."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in net.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            decayed = isinstance(module, _DECAYED) and name == "weight"
            (decay if decayed or not no_decay_norm_bias else no_decay).append(param)
    return decay, no_decay


def parameter_groups(
    net: nn.Module,
    lr: float | None = None,
    weight_decay: float | None = None,
    no_decay_norm_bias: bool = False,
) -> list[dict[str, Any]]:
    """Named parameter groups ``decay`` and ``no_decay`` (empty ones dropped).

    Args:
        net: The network.
        lr: If set, the lr of the net's groups (else the optimizer's default).
        weight_decay: If set, the weight decay of the ``decay`` group (else the optimizer's).
        no_decay_norm_bias: Put norm, bias, PReLU and other non-conv/linear parameters in the
            ``no_decay`` group with weight decay 0.
    """
    decay, no_decay = _split_decay(net, no_decay_norm_bias)
    net_lr = {} if lr is None else {"lr": lr}
    decay_wd = {} if weight_decay is None else {"weight_decay": weight_decay}
    groups: list[dict[str, Any]] = [
        {"name": "decay", "params": decay, **net_lr, **decay_wd},
        {"name": "no_decay", "params": no_decay, **net_lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def describe_groups(optimizer: Optimizer) -> str:
    """One line per group: name, tensors, parameters, lr and weight decay (logged at fit start)."""
    lines = [f"{type(optimizer).__name__} parameter groups:"]
    for i, group in enumerate(optimizer.param_groups):
        numel = sum(p.numel() for p in group["params"])
        lines.append(
            f"  {group.get('name', i)}: {len(group['params'])} tensors, {numel:,} parameters, "
            f"lr={group['lr']:g}, weight_decay={group.get('weight_decay', 0.0):g}"
        )
    return "\n".join(lines)
