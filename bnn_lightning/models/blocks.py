"""Binary ResNet blocks, downsample shortcuts and stems of the HolmesShuan collection.

The collection is "Training Tricks for Binarized Neural Networks" (HolmesShuan, 2019).

``BasicBlock`` (the collection's block; Bi-Real style: every binary 3x3 conv has its own shortcut)::

    out = prelu(conv3x3(sign(BN(x))) * gate(x) + shortcut(x))

``Bottleneck`` (the collection's binary bottleneck: 1x1 -> 3x3 -> 1x1 binary convs, BN before each
sign, an inner residual around the 3x3, a real-valued branch on the shortcut and PReLU).

Downsample shortcuts, exactly as the collection lists them (``v1`` is the default and its
recommendation; ``v2`` is Bi-Real Net's and costs 4x fewer FLOPs since the 1x1 conv runs after
the pooling):

* ``v1``: ``Conv1x1 -> BN -> AvgPool(2, 2)``
* ``v2``: ``AvgPool(2, 2) -> Conv1x1 -> BN``
* ``v3``: ``Conv1x1 -> BN -> AvgPool(3, 2, padding=1)``

The 2x2 pools use ``ceil_mode=True`` so that odd feature maps match the strided 3x3 conv's
output size (identical to the collection's pool on even sizes).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from bnn_lightning.attention import get_attention
from bnn_lightning.fused_prelu import AddPReLU
from bnn_lightning.layers import BinaryConv2d, BinaryLinear
from bnn_lightning.registry import unknown_name

__all__ = [
    "DOWNSAMPLE",
    "STEMS",
    "STEM_ORDERS",
    "BasicBlock",
    "BlockOptions",
    "Bottleneck",
    "check_choice",
    "make_downsample",
    "make_stem",
]

Spec = str | dict[str, Any] | None

DOWNSAMPLE: tuple[str, ...] = ("v1", "v2", "v3")
STEMS: tuple[str, ...] = ("cifar", "imagenet")
STEM_ORDERS: tuple[str, ...] = ("conv-bn-relu-pool", "conv-pool-bn-relu")


def check_choice(kind: str, value: str, valid: tuple[str, ...] | dict[str, Any]) -> None:
    """Raise a one-line ValueError naming ``value`` and the valid choices."""
    if value not in valid:
        raise unknown_name(kind, value, valid)


@dataclass(frozen=True)
class BlockOptions:
    """Settings shared by every block of a network.

    Args:
        activation: Input quantizer spec of the binary convs (None = real-valued activations).
        weight: Weight quantizer spec of the binary convs (None = real-valued weights).
        bn_momentum: Momentum of every BatchNorm (the HolmesShuan collection recommends 0.2).
        groups: Groups of the binary 3x3 convs (the HolmesShuan collection's trick to cut BOPs).
        attention: Gate name, see :mod:`bnn_lightning.attention`.
        downsample: Shortcut variant for strided blocks, one of :data:`DOWNSAMPLE`.
        pad_value: Padding value of the binary convs (see :class:`BinaryConv2d`).
    """

    activation: Spec = "ste_sign"
    weight: Spec = "magnitude_aware_sign"
    bn_momentum: float = 0.2
    groups: int = 1
    attention: str = "none"
    downsample: str = "v1"
    pad_value: float = 0.0

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Module:
        """A binary conv with these quantizers (padding keeps the size at stride 1)."""
        return BinaryConv2d(
            cin,
            cout,
            kernel,
            stride,
            padding=kernel // 2,
            groups=groups,
            input_quantizer=copy.deepcopy(self.activation),
            weight_quantizer=copy.deepcopy(self.weight),
            pad_value=self.pad_value,
        )

    def linear(self, cin: int, cout: int) -> nn.Module:
        """A binary linear layer (with bias) with these quantizers."""
        return BinaryLinear(
            cin, cout, True, copy.deepcopy(self.activation), copy.deepcopy(self.weight)
        )

    def bn(self, channels: int, eps: float = 1e-5) -> nn.BatchNorm2d:
        """A BatchNorm with this momentum."""
        return nn.BatchNorm2d(channels, eps=eps, momentum=self.bn_momentum)


def make_downsample(
    version: str, cin: int, cout: int, stride: int, bn_momentum: float, eps: float = 1e-5
) -> nn.Sequential:
    """Real-valued shortcut ``cin -> cout``, modules ordered as the HolmesShuan collection's.

    No pool at stride 1.
    """
    check_choice("downsample", version, DOWNSAMPLE)
    conv = nn.Conv2d(cin, cout, 1, bias=False)
    bn = nn.BatchNorm2d(cout, eps=eps, momentum=bn_momentum)
    if stride == 1:
        return nn.Sequential(conv, bn)
    if version == "v3":
        return nn.Sequential(conv, bn, nn.AvgPool2d(3, stride, padding=1))
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True)
    return nn.Sequential(pool, conv, bn) if version == "v2" else nn.Sequential(conv, bn, pool)


class BasicBlock(nn.Module):
    """``prelu(conv3x3(sign(BN(x))) * gate(x) + shortcut(x))``; the sign lives in the conv.

    The gate reads the real-valued block input ``x`` (the HolmesShuan collection's snippet reassigns
    ``x = BN(x)`` first, so there it reads ``BN(x)``; both are real-valued, ``x`` keeps the gate
    independent of the BN statistics). The shortcut is the identity, or the ``downsample``
    variant when the stride or the width changes.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, opts: BlockOptions | None = None
    ) -> None:
        super().__init__()
        opts = opts or BlockOptions()
        self.bn = opts.bn(inplanes)
        self.conv = opts.conv(inplanes, planes, 3, stride, opts.groups)
        self.gate = get_attention(opts.attention, inplanes, planes, stride)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = make_downsample(
                opts.downsample, inplanes, planes, stride, opts.bn_momentum
            )
        self.prelu = AddPReLU(planes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(self.bn(x))
        if self.gate is not None:
            out = out * self.gate(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.prelu(out, shortcut)


class Bottleneck(nn.Module):
    """The HolmesShuan collection's binary bottleneck ``inplanes -> planes -> planes -> 4 planes``.

    ``conv1`` (1x1, carries the stride), ``conv2`` (3x3, grouped, with the inner residual
    ``conv2(...) + conv1(...)``; the gate scales it from ``conv1``'s real-valued output) and
    ``conv3`` (1x1) are binary, each after ``BN -> sign``;
    ``bn4`` follows ``conv3``. With ``has_branch`` the shortcut is real-valued: at stride 1
    ``Conv1x1 -> BN -> AvgPool(3, 1, 1)``, at stride 2 the ``downsample`` variant mapping
    ``inplanes -> 2 inplanes`` (``v1`` is the collection's branch), followed by PReLU. Without it
    the shortcut is the identity and there is no PReLU, as in the collection.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        has_branch: bool = True,
        opts: BlockOptions | None = None,
    ) -> None:
        super().__init__()
        opts = opts or BlockOptions()
        out = planes * self.expansion
        if stride != 1 and (not has_branch or inplanes * 2 != out):
            raise ValueError(
                f"A stride-{stride} Bottleneck needs has_branch=True and planes={inplanes // 2} "
                f"(4 * planes == 2 * inplanes), got has_branch={has_branch}, planes={planes}."
            )
        if not has_branch and inplanes != out:
            raise ValueError(f"Bottleneck without branch needs inplanes == {out}, got {inplanes}.")
        self.bn1, self.conv1 = opts.bn(inplanes), opts.conv(inplanes, planes, 1, stride)
        self.bn2, self.conv2 = opts.bn(planes), opts.conv(planes, planes, 3, 1, opts.groups)
        self.gate = get_attention(opts.attention, planes, planes)
        self.bn3, self.conv3 = opts.bn(planes), opts.conv(planes, out, 1)
        self.bn4 = opts.bn(out)
        self.branch: nn.Module | None = None
        self.prelu: AddPReLU | None = None
        if has_branch:
            self.branch = (
                make_downsample(opts.downsample, inplanes, out, stride, opts.bn_momentum, 1e-4)
                if stride != 1
                else nn.Sequential(
                    nn.Conv2d(inplanes, out, 1, bias=False),
                    nn.BatchNorm2d(out, eps=1e-4, momentum=opts.bn_momentum),
                    nn.AvgPool2d(3, 1, padding=1),
                )
            )
            self.prelu = AddPReLU(out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.branch is None else self.branch(x)
        add = self.conv1(self.bn1(x))
        out = self.conv2(self.bn2(add))
        if self.gate is not None:
            out = out * self.gate(add)
        out = self.bn4(self.conv3(self.bn3(out + add)))
        return out + shortcut if self.prelu is None else self.prelu(out, shortcut)


def make_stem(stem: str, order: str, width: int, bn_momentum: float, conv: nn.Module) -> nn.Module:
    """The first layer: ``cifar`` (3x3 stride 1, no pool) or ``imagenet`` (7x7 stride 2 + pool).

    ``order`` is ``conv-bn-relu-pool`` or the HolmesShuan collection's reordering
    ``conv-pool-bn-relu`` (the same layers; BN and ReLU then run on the 4x smaller pooled map).
    The CIFAR stem has no pool, so both orders give ``conv-bn-relu``.
    """
    check_choice("stem", stem, STEMS)
    check_choice("stem order", order, STEM_ORDERS)
    layers = {"conv": conv, "bn": nn.BatchNorm2d(width, momentum=bn_momentum), "relu": nn.ReLU()}
    if stem == "imagenet":
        layers["pool"] = nn.MaxPool2d(3, 2, padding=1)
    names = [n for n in order.split("-") if n in layers]
    return nn.Sequential(OrderedDict((n, layers[n]) for n in names))
