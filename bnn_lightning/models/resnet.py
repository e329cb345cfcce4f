"""Binary ResNet-18 / 34 / 50 of the HolmesShuan collection's blocks (:mod:`~.models.blocks`).

ResNet-18 and ResNet-34 follow Bi-Real Net: each original basic block (two 3x3 convs) becomes
two :class:`BasicBlock` s, so every binary conv has its own shortcut (``block="reactnet"``: two
:class:`~bnn_lightning.models.reactnet.ReActBlock` s, ReActNet's learnable thresholds). ResNet-50
stacks its binary :class:`Bottleneck`. Stem, widths, shortcut, gates, quantizers and the training
mode are constructor arguments, so a YAML config reaches every variant.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from bnn_lightning.layers import MODES
from bnn_lightning.models.blocks import (
    DOWNSAMPLE,
    BasicBlock,
    BlockOptions,
    Bottleneck,
    Spec,
    check_choice,
    make_stem,
)
from bnn_lightning.models.reactnet import ReActBlock

__all__ = ["ARCHS", "BLOCKS", "BinaryResNet"]

ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    # Bi-Real style: each original basic block of ResNet-10/18/34 becomes two BasicBlocks.
    "resnet10": ("basic", (2, 2, 2, 2)),
    "resnet18": ("basic", (4, 4, 4, 4)),
    "resnet34": ("basic", (6, 8, 12, 6)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
BLOCKS: tuple[str, ...] = ("standard", "reactnet")


class BinaryResNet(nn.Module):
    """A binary ResNet: real-valued stem, binary blocks, real-valued pooled classifier.

    Args:
        arch: ``resnet10`` / ``resnet18`` / ``resnet34`` (8 / 16 / 32 :class:`BasicBlock` s, each
            original basic block split in two; ``resnet10`` is the quickstart's fast network) or
            ``resnet50`` (:class:`Bottleneck` s in stages of 3, 4, 6, 3).
        num_classes: Classifier outputs (linked from the datamodule by the CLI).
        stem: ``cifar`` (3x3 stride 1) or ``imagenet`` (7x7 stride 2 + 3x3 max-pool).
        width: Channels after the stem; stages have ``width * (1, 2, 4, 8)`` planes.
        stem_order: ``conv-bn-relu-pool`` or ``conv-pool-bn-relu``.
        downsample: Shortcut of strided blocks, ``v1`` (default), ``v2`` or ``v3``.
        attention: Gate on every binary 3x3 conv: ``none``, ``se``, ``eca`` or ``cbam``.
        groups: Groups of the binary 3x3 convs; must divide ``width``.
        bn_momentum: Momentum of every BatchNorm. Default 0.2, the HolmesShuan collection's
            recommendation (a marginal gain); PyTorch's default is 0.1.
        activation_quantizer: Quantizer spec for binarized activations (name or class_path dict).
        weight_quantizer: Quantizer spec for binarized weights.
        mode: ``binary`` (default), ``binary_activations`` (stage 1 of the two-stage recipe),
            ``binary_weights`` or ``float``: which of the two quantizers the binary layers use.
            :func:`bnn_lightning.layers.set_mode` switches it later with the same state_dict.
        binary_stem: Make the first conv a :class:`BinaryConv2d` (default real-valued).
        binary_head: Make the classifier a :class:`BinaryLinear` (default real-valued).
        pad_value: Padding value of the binary 3x3 convs.
        block: ``standard`` (:class:`BasicBlock`, or :class:`Bottleneck` for ``resnet50``) or
            ``reactnet`` (:class:`~bnn_lightning.models.reactnet.ReActBlock`: ReActNet's
            ``RSign`` thresholds and ``RPReLU``, BatchNorm after the conv; ResNet-10/18/34).

    Attributes:
        init_args: The constructor arguments, so ``BinaryResNet(**model.init_args)`` rebuilds the
            architecture (plain data when quantizers are given by name or class_path mapping).
            ``mode`` is the one built with; :func:`~bnn_lightning.layers.get_modes` tells the
            current one.
        num_features: Width of the pooled features fed to the classifier.
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
        block: str = "standard",
    ) -> None:
        init_args = copy.deepcopy(
            {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        )
        super().__init__()
        check_choice("arch", arch, ARCHS)
        check_choice("mode", mode, MODES)
        check_choice("downsample", downsample, DOWNSAMPLE)
        check_choice("block", block, BLOCKS)
        if block == "reactnet" and ARCHS[arch][0] != "basic":
            basic = ", ".join(a for a, (kind, _) in ARCHS.items() if kind == "basic")
            raise ValueError(f"block='reactnet' needs a basic-block arch ({basic}), got {arch!r}.")
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
        self.stages = self._make_stages(arch, width, opts, block)
        self.num_features = nf = width * 8 * (4 if ARCHS[arch][0] == "bottleneck" else 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = opts.linear(nf, num_classes) if binary_head else nn.Linear(nf, num_classes)

    @staticmethod
    def _make_stages(arch: str, width: int, opts: BlockOptions, block: str) -> nn.Sequential:
        kind, depths = ARCHS[arch]
        stages, inplanes = [], width
        for i, depth in enumerate(depths):
            planes = width * 2**i
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                if kind == "bottleneck":
                    blocks.append(Bottleneck(inplanes, planes, stride, j == 0, opts))
                else:
                    basic = ReActBlock if block == "reactnet" else BasicBlock
                    blocks.append(basic(inplanes, planes, stride, opts))
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
