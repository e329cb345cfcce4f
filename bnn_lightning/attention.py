"""Channel attention gates for binary blocks: ``out = conv(sign(BN(x))) * gate(x)``.

The HolmesShuan collection rescales the output of each binary convolution by a real-valued gate
computed from the block input ``x``, Real-to-Binary's data-driven channel re-scaling (Martinez et
al., ICLR 2020) ("SE could be any channel attention module, such as SE-Net, CGD, CBAM, BAM").
Every gate here maps the real-valued block input ``x`` of shape ``(N, C_in, H, W)`` to a tensor
with values in ``(0, 1)`` that broadcasts against the conv output ``(N, C_out, H / s, W / s)``:

========  ===================================================================================
name      gate
========  ===================================================================================
``none``  no gate (the block is a plain binary block)
``se``    Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018): avg-pool -> 1x1 -> ReLU ->
          1x1 -> sigmoid, shape ``(N, C_out, 1, 1)``
``eca``   Wang et al., "ECA-Net" (CVPR 2020): avg-pool -> 1-D conv across channels -> sigmoid,
          shape ``(N, C_out, 1, 1)``
``cbam``  Woo et al., "CBAM" (ECCV 2018): channel gate from avg- and max-pool through a shared MLP,
          times a spatial gate from a 7x7 conv over channel mean and max, shape
          ``(N, C_out, H / s, W / s)``
========  ===================================================================================

Gates are built by :func:`get_attention` from their registry name, so a YAML config selects one
with ``attention: se``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn_lightning.registry import Registry

__all__ = ["ATTENTION", "CBAMGate", "ECAGate", "SEGate", "get_attention"]


def _hidden(in_channels: int, reduction: int) -> int:
    return max(in_channels // reduction, 4)


class SEGate(nn.Module):
    """Squeeze-and-excitation gate, ``sigmoid(W2 relu(W1 avgpool(x)))`` of shape (N, C_out, 1, 1).

    Args:
        in_channels: Channels of the block input the gate reads.
        out_channels: Channels of the conv output the gate scales.
        stride: Stride of the gated conv (a channel gate does not depend on it).
        reduction: Hidden width is ``max(in_channels // reduction, 4)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, reduction: int = 16
    ) -> None:
        super().__init__()
        hidden = _hidden(in_channels, reduction)
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class ECAGate(nn.Module):
    """Efficient channel attention: a 1-D conv of adaptive size ``k`` across pooled channels.

    ``k`` is the odd number nearest ``(log2(C) + 1) / 2`` as in the paper. When ``C_out != C_in``
    (the first block of a stage), the ``C_in`` channel logits are linearly resampled to ``C_out``
    before the sigmoid, which keeps the gate parameter-free apart from the ``k`` conv taps.

    Args:
        in_channels: Channels of the block input the gate reads.
        out_channels: Channels of the conv output the gate scales.
        stride: Stride of the gated conv (a channel gate does not depend on it).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        t = int(abs((math.log2(in_channels) + 1) / 2))
        k = t if t % 2 else t + 1
        self.out_channels = out_channels
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.adaptive_avg_pool2d(x, 1).flatten(1).unsqueeze(1))
        if y.shape[-1] != self.out_channels:
            y = F.interpolate(y, size=self.out_channels, mode="linear", align_corners=True)
        return torch.sigmoid(y).transpose(1, 2).unsqueeze(-1)


class CBAMGate(nn.Module):
    """CBAM: channel gate ``(N, C_out, 1, 1)`` times spatial gate ``(N, 1, H / s, W / s)``.

    The channel gate is ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``. The spatial gate is a
    7x7 conv over the channel mean and max of ``x``; for a strided conv its logits are average
    pooled by ``stride`` (ceil mode, matching a padded 3x3 conv's output size). Unlike the paper,
    the spatial descriptor is taken from ``x`` itself rather than from the channel-refined
    features, because the channel gate has the conv's output width, not the input's.

    Args:
        in_channels: Channels of the block input the gate reads.
        out_channels: Channels of the conv output the gate scales.
        stride: Stride of the gated conv, to match the spatial gate to its output size.
        reduction: Hidden width of the shared MLP is ``max(in_channels // reduction, 4)``.
        kernel_size: Size of the spatial conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        reduction: int = 16,
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        hidden = _hidden(in_channels, reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, out_channels, 1)
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        channel = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        spatial = self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1))
        if self.stride > 1:
            spatial = F.avg_pool2d(spatial, self.stride, self.stride, ceil_mode=True)
        return torch.sigmoid(channel) * torch.sigmoid(spatial)


ATTENTION: Registry[type[nn.Module] | None] = Registry(
    "attention", {"none": None, "se": SEGate, "eca": ECAGate, "cbam": CBAMGate}
)
"""Gates by name; ``none`` is no gate."""


def get_attention(
    name: str, in_channels: int, out_channels: int, stride: int = 1
) -> nn.Module | None:
    """Build the gate registered as ``name`` (``None`` for ``"none"``).

    Raises:
        ValueError: ``name`` is not in :data:`ATTENTION`; the message lists the valid names.
    """
    cls = ATTENTION.lookup(name)
    return None if cls is None else cls(in_channels, out_channels, stride)
