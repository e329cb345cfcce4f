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
from bnn_lightning.models.reactnet import ReActBlock
from bnn_lightning.models.resnet import ARCHS, BLOCKS, BinaryResNet
from bnn_lightning.registry import Registry

__all__ = [
    "ARCHS",
    "BLOCKS",
    "DOWNSAMPLE",
    "MODELS",
    "STEMS",
    "STEM_ORDERS",
    "BasicBlock",
    "BinaryResNet",
    "BlockOptions",
    "Bottleneck",
    "ReActBlock",
    "create_model",
    "list_models",
    "make_downsample",
    "make_stem",
]

MODELS: Registry[dict[str, Any]] = Registry(
    "model",
    {
        f"{arch}{suffix}": {"arch": arch, "stem": stem}
        for arch in ARCHS
        for suffix, stem in (("", "imagenet"), ("_cifar", "cifar"))
    },
)
"""Model names and the :class:`BinaryResNet` arguments each one fixes."""


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def create_model(name: str, **kwargs: Any) -> BinaryResNet:
    """Build the registered model ``name``; ``kwargs`` go to :class:`BinaryResNet`.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    return BinaryResNet(**{**MODELS.lookup(name), **kwargs})
