"""Binary ResNets built from the seed's blocks.

``BasicBlock`` (the seed's block; Bi-Real style: every binary 3x3 conv has its own shortcut)::

    out = prelu(conv3x3(sign(BN(x))) * gate(x) + shortcut(x))

``Bottleneck`` (the seed's binary bottleneck: 1x1 -> 3x3 -> 1x1 binary convs, BN before each sign,
an inner residual around the 3x3, a real-valued branch on the shortcut and PReLU).

Downsample shortcuts, exactly as the seed lists them (``v1`` is the default and the seed's
recommendation; ``v2`` is Bi-Real Net's and costs 4x fewer FLOPs since the 1x1 conv runs after
the pooling):

* ``v1``: ``Conv1x1 -> BN -> AvgPool(2, 2)``
* ``v2``: ``AvgPool(2, 2) -> Conv1x1 -> BN``
* ``v3``: ``Conv1x1 -> BN -> AvgPool(3, 2, padding=1)``

The 2x2 pools use ``ceil_mode=True`` so that odd feature maps match the strided 3x3 conv's
output size (identical to the seed's pool on even sizes).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from bnn_lightning.attention import get_attention
from bnn_lightning.layers import MODES, BinaryConv2d, BinaryLinear

__all__ = [
    "ARCHS",
    "DOWNSAMPLE",
    "STEMS",
    "STEM_ORDERS",
    "BasicBlock",
    "BinaryResNet",
    "BlockOptions",
    "Bottleneck",
    "make_downsample",
    "make_stem",
]

Spec = str | dict[str, Any] | None

DOWNSAMPLE: tuple[str, ...] = ("v1", "v2", "v3")
STEMS: tuple[str, ...] = ("cifar", "imagenet")
STEM_ORDERS: tuple[str, ...] = ("conv-bn-relu-pool", "conv-pool-bn-relu")
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    # Bi-Real style: each original basic block of ResNet-18/34 becomes two BasicBlocks.
    "resnet18": ("basic", (4, 4, 4, 4)),
    "resnet34": ("basic", (6, 8, 12, 6)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def _check(kind: str, value: str, valid: tuple[str, ...] | dict[str, Any]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {kind} {value!r}; use one of {', '.join(valid)}.")


@dataclass(frozen=True)
class BlockOptions:
    """Settings shared by every block of a network.

    Args:
        activation: Input quantizer spec of the binary convs (None = real-valued activations).
        weight: Weight quantizer spec of the binary convs (None = real-valued weights).
        bn_momentum: Momentum of every BatchNorm (the seed recommends 0.2).
        groups: Groups of the binary 3x3 convs (the seed's trick to cut BOPs).
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
    """Real-valued shortcut ``cin -> cout`` in the seed's module order (no pool at stride 1)."""
    _check("downsample", version, DOWNSAMPLE)
    conv = nn.Conv2d(cin, cout, 1, bias=False)
    bn = nn.BatchNorm2d(cout, eps=eps, momentum=bn_momentum)
    if stride == 1:
        return nn.Sequential(conv, bn)
    if version == "v3":
        return nn.Sequential(conv, bn, nn.AvgPool2d(3, stride, padding=1))
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True)
    return nn.Sequential(pool, conv, bn) if version == "v2" else nn.Sequential(conv, bn, pool)


class BasicBlock(nn.Module):
    """``prelu(conv3x3(sign(BN(x))) * gate(x) + shortcut(x))``; the sign lives in the conv."""

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
        self.prelu = nn.PReLU(planes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(self.bn(x))
        if self.gate is not None:
            out = out * self.gate(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + shortcut)


class Bottleneck(nn.Module):
    """The seed's binary bottleneck ``inplanes -> planes -> planes -> 4 planes``.

    ``conv1`` (1x1, carries the stride), ``conv2`` (3x3, grouped, gated, with the inner residual
    ``conv2(...) + conv1(...)``) and ``conv3`` (1x1) are binary, each after ``BN -> sign``;
    ``bn4`` follows ``conv3``. With ``has_branch`` the shortcut is real-valued: at stride 1
    ``Conv1x1 -> BN -> AvgPool(3, 1, 1)``, at stride 2 the ``downsample`` variant mapping
    ``inplanes -> 2 inplanes`` (``v1`` is the seed's branch), followed by PReLU. Without it the
    shortcut is the identity and there is no PReLU, as in the seed.
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
        self.prelu: nn.Module | None = None
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
            self.prelu = nn.PReLU(out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.branch is None else self.branch(x)
        add = self.conv1(self.bn1(x))
        out = self.conv2(self.bn2(add))
        if self.gate is not None:
            out = out * self.gate(add)
        out = self.bn4(self.conv3(self.bn3(out + add))) + shortcut
        return out if self.prelu is None else self.prelu(out)


def make_stem(stem: str, order: str, width: int, bn_momentum: float, conv: nn.Module) -> nn.Module:
    """The first layer: ``cifar`` (3x3 stride 1, no pool) or ``imagenet`` (7x7 stride 2 + pool).

    ``order`` is ``conv-bn-relu-pool`` or the seed's reordering ``conv-pool-bn-relu`` (the same
    layers; BN and ReLU then run on the 4x smaller pooled map). The CIFAR stem has no pool, so
    both orders give ``conv-bn-relu``.
    """
    _check("stem", stem, STEMS)
    _check("stem order", order, STEM_ORDERS)
    layers = {"conv": conv, "bn": nn.BatchNorm2d(width, momentum=bn_momentum), "relu": nn.ReLU()}
    if stem == "imagenet":
        layers["pool"] = nn.MaxPool2d(3, 2, padding=1)
    names = [n for n in order.split("-") if n in layers]
    return nn.Sequential(OrderedDict((n, layers[n]) for n in names))


class BinaryResNet(nn.Module):
    """A binary ResNet: real-valued stem, binary blocks, real-valued pooled classifier.

    Args:
        arch: ``resnet18`` / ``resnet34`` (16 / 32 :class:`BasicBlock` s, each original basic
            block split in two) or ``resnet50`` (:class:`Bottleneck` s in stages of 3, 4, 6, 3).
        num_classes: Classifier outputs (linked from the datamodule by the CLI).
        stem: ``cifar`` (3x3 stride 1) or ``imagenet`` (7x7 stride 2 + 3x3 max-pool).
        width: Channels after the stem; stages have ``width * (1, 2, 4, 8)`` planes.
        stem_order: ``conv-bn-relu-pool`` or ``conv-pool-bn-relu``.
        downsample: Shortcut of strided blocks, ``v1`` (default, the seed's), ``v2`` or ``v3``.
        attention: Gate on every binary 3x3 conv: ``none``, ``se``, ``eca`` or ``cbam``.
        groups: Groups of the binary 3x3 convs; must divide ``width``.
        bn_momentum: Momentum of every BatchNorm. Default 0.2, the seed's recommendation (a
            marginal gain); PyTorch's default is 0.1.
        activation_quantizer: Quantizer spec for binarized activations (name or class_path dict).
        weight_quantizer: Quantizer spec for binarized weights.
        mode: ``binary`` (default), ``binary_activations`` (the seed's stage 1),
            ``binary_weights`` or ``float``: which of the two quantizers the binary layers use.
            :func:`bnn_lightning.layers.set_mode` switches it later with the same state_dict.
        binary_stem: Make the first conv a :class:`BinaryConv2d` (default real-valued).
        binary_head: Make the classifier a :class:`BinaryLinear` (default real-valued).
        pad_value: Padding value of the binary 3x3 convs.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 1000,
        stem: str = "imagenet",
        width: int = 64,
        stem_order: str = "conv-bn-relu-pool",
        downsample: str = "v1",
        attention: str = "none",
        groups: int = 1,
        bn_momentum: float = 0.2,
        activation_quantizer: Spec = "ste_sign",
        weight_quantizer: Spec = "magnitude_aware_sign",
        mode: str = "binary",
        binary_stem: bool = False,
        binary_head: bool = False,
        pad_value: float = 0.0,
    ) -> None:
        init_args = copy.deepcopy(
            {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        )
        super().__init__()
        _check("arch", arch, ARCHS)
        _check("mode", mode, MODES)
        _check("downsample", downsample, DOWNSAMPLE)
        if width % groups:
            raise ValueError(f"groups={groups} must divide width={width}; pick a divisor of it.")
        self.init_args: dict[str, Any] = init_args
        binary_in = mode in ("binary_activations", "binary")
        binary_w = mode in ("binary_weights", "binary")
        opts = BlockOptions(
            activation=activation_quantizer if binary_in else None,
            weight=weight_quantizer if binary_w else None,
            bn_momentum=bn_momentum,
            groups=groups,
            attention=attention,
            downsample=downsample,
            pad_value=pad_value,
        )
        kernel, stride = (7, 2) if stem == "imagenet" else (3, 1)
        stem_conv = (
            opts.conv(3, width, kernel, stride)
            if binary_stem
            else nn.Conv2d(3, width, kernel, stride, padding=kernel // 2, bias=False)
        )
        self.stem = make_stem(stem, stem_order, width, bn_momentum, stem_conv)
        self.stages = self._make_stages(arch, width, opts)
        self.num_features = nf = width * 8 * (4 if ARCHS[arch][0] == "bottleneck" else 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = opts.linear(nf, num_classes) if binary_head else nn.Linear(nf, num_classes)

    @staticmethod
    def _make_stages(arch: str, width: int, opts: BlockOptions) -> nn.Sequential:
        kind, depths = ARCHS[arch]
        stages, inplanes = [], width
        for i, depth in enumerate(depths):
            planes, blocks = width * 2**i, []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                block: nn.Module
                if kind == "basic":
                    block = BasicBlock(inplanes, planes, stride, opts)
                else:
                    block = Bottleneck(inplanes, planes, stride, j == 0, opts)
                blocks.append(block)
                inplanes = planes * (1 if kind == "basic" else Bottleneck.expansion)
            stages.append(nn.Sequential(*blocks))
        return nn.Sequential(*stages)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features, shape ``(N, num_features)``."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits from pooled features."""
        return self.fc(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
