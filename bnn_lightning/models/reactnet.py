"""ReActNet's binary basic block (Liu et al., "ReActNet", ECCV 2020) on the Bi-Real ResNet.

``ReActBlock`` is the block of ReActNet's ResNet-based networks (ReActNet-18 / 34)::

    out = rprelu(BN(conv3x3(rsign(x))) * gate(x) + shortcut(x))

Unlike :class:`~bnn_lightning.models.BasicBlock` (``BN -> sign -> conv``, the HolmesShuan
collection's order), the BatchNorm follows the convolution, as in Bi-Real Net and ReActNet: a
BatchNorm before the sign would make the threshold ``alpha`` redundant with its bias. ``rsign``
(:class:`~bnn_lightning.RSign`) is the binary conv's input quantizer, ``rprelu``
(:class:`~bnn_lightning.RPReLU`) replaces the PReLU; the shortcut is the identity, or the
``downsample`` variant when the stride or the width changes.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from bnn_lightning.attention import get_attention
from bnn_lightning.layers import BinaryConv2d
from bnn_lightning.models.blocks import BlockOptions, make_downsample
from bnn_lightning.thresholds import RPReLU, RSign

__all__ = ["ReActBlock"]


class ReActBlock(nn.Module):
    """``rprelu(BN(conv3x3(rsign(x))) * gate(x) + shortcut(x))``, see the module doc.

    Args:
        inplanes: Input channels (one ``RSign`` threshold each).
        planes: Output channels (one ``RPReLU`` slope and two shifts each).
        stride: Stride of the binary conv and of the downsample shortcut.
        opts: Quantizers, BatchNorm momentum, groups, gate, shortcut and padding of the network.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, opts: BlockOptions | None = None
    ) -> None:
        super().__init__()
        opts = opts or BlockOptions()
        self.conv = cast(BinaryConv2d, opts.conv(inplanes, planes, 3, stride, opts.groups))
        self.conv.input_quantizer = RSign(inplanes, self.conv.input_quantizer)
        self.bn = opts.bn(planes)
        self.gate = get_attention(opts.attention, inplanes, planes, stride)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = make_downsample(
                opts.downsample, inplanes, planes, stride, opts.bn_momentum
            )
        self.prelu = RPReLU(planes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn(self.conv(x))
        if self.gate is not None:
            out = out * self.gate(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.prelu(out, shortcut)
