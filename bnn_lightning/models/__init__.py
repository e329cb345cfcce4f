"""Model registry: ``create_model("resnet18_cifar", width=32)`` or ``BinaryResNet(...)`` directly.

A registered name fixes ``arch`` and ``stem``; every other :class:`BinaryResNet` argument is a
keyword (``create_model("resnet18", downsample="v2", attention="se")``), and a keyword given
explicitly overrides the name's defaults.
"""

from __future__ import annotations

from typing import Any

from bnn_lightning.models.blocks import (
    DOWNSAMPLE,
    STEM_ORDERS,
    STEMS,
    BasicBlock,
    BlockOptions,
    Bottleneck,
    make_downsample,
    make_stem,
)
from bnn_lightning.models.resnet import ARCHS, BinaryResNet

__all__ = [
    "ARCHS",
    "DOWNSAMPLE",
    "MODELS",
    "STEMS",
    "STEM_ORDERS",
    "BasicBlock",
    "BinaryResNet",
    "BlockOptions",
    "Bottleneck",
    "create_model",
    "list_models",
    "make_downsample",
    "make_stem",
]

MODELS: dict[str, dict[str, Any]] = {
    f"{arch}{suffix}": {"arch": arch, "stem": stem}
    for arch in ARCHS
    for suffix, stem in (("", "imagenet"), ("_cifar", "cifar"))
}


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def create_model(name: str, **kwargs: Any) -> BinaryResNet:
    """Build the registered model ``name``; ``kwargs`` go to :class:`BinaryResNet`.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; use one of {', '.join(list_models())}.")
    return BinaryResNet(**{**MODELS[name], **kwargs})
