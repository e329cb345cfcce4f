"""ReActNet's learnable thresholds: ``RSign`` and ``RPReLU`` (Liu et al., "ReActNet", ECCV 2020).

A binary network cannot shift the distribution of a sign's input by itself; ReActNet gives every
channel a learnable threshold before the sign and learnable shifts around the PReLU:

* ``RSign``: ``q(x - alpha_c)``, where ``q`` is the block's activation quantizer (its forward is
  ``sign`` with ``sign(0) = +1``, its STE gives the gradient) and ``alpha`` has one value per
  channel. Gradients: ``dL/dx = dL/dy * q'(x - alpha_c)`` and
  ``dL/dalpha_c = -sum_{n,h,w} dL/dy * q'(x - alpha_c)``.
* ``RPReLU``: ``PReLU_c(x - gamma_c) + zeta_c``, i.e. ``x - gamma_c + zeta_c`` where
  ``x >= gamma_c`` and ``beta_c (x - gamma_c) + zeta_c`` elsewhere, with learnable ``gamma``,
  ``zeta`` and slope ``beta``.

``RSign`` is a quantizer: it goes where a binary layer takes its ``input_quantizer``, so the
layer's mode, the model summary's BOPs and the packed export treat it as the binary activation it
is. Its ``quantizer`` can be swapped (stage handoff, activation curriculum) while ``alpha`` stays;
with ``quantizer=None`` it only shifts (a real-valued input, e.g. in ``float`` mode).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnn_lightning.fused_prelu import AddPReLU
from bnn_lightning.quantizers import Quantizer, QuantizerSpec, get_quantizer

__all__ = ["RPReLU", "RSign"]


def _per_channel(param: Tensor, x: Tensor) -> Tensor:
    """``param`` (C,) shaped to broadcast over dim 1 of ``x`` (``(N, C)`` or ``(N, C, ...)``)."""
    return param.to(x.dtype).view(-1, *[1] * (x.dim() - 2))


def _check_channels(kind: str, channels: int) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{kind} needs a positive number of channels, got {channels!r}.")
    return channels


class RSign(Quantizer):
    r"""ReActNet's sign with a learnable per-channel threshold.

    Forward: ``q(x) = sign(x - alpha_c)`` (``+1`` where ``x >= alpha_c``, else ``-1``).
    Backward: the wrapped quantizer's STE at ``x - alpha_c`` for ``x``, its negative summed over
    every position but the channel for ``alpha``.

    Liu et al., "ReActNet: Towards Precise Binary Neural Network with Generalized Activation
    Functions" (ECCV 2020).

    Args:
        channels: Channels of the input (dim 1); one threshold each, initialized to 0.
        quantizer: The sign and its STE (a spec for :func:`~bnn_lightning.get_quantizer`), e.g.
            ``ste_sign`` or ReActNet's ``approx_sign``; None only shifts.
    """

    def __init__(self, channels: int, quantizer: QuantizerSpec = "ste_sign") -> None:
        super().__init__()
        self.channels = _check_channels("RSign", channels)
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.quantizer: nn.Module | None = get_quantizer(quantizer)

    @property
    def precision(self) -> int:  # type: ignore[override]
        """The wrapped quantizer's precision (32 without one)."""
        return int(getattr(self.quantizer, "precision", 32))

    @property
    def unit_output(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.quantizer, "unit_output", False))

    def shift(self, x: Tensor) -> Tensor:
        """``x - alpha_c``."""
        return x - _per_channel(self.alpha, x)

    def forward(self, x: Tensor) -> Tensor:
        shifted = self.shift(x)
        return shifted if self.quantizer is None else self.quantizer(shifted)

    def extra_repr(self) -> str:
        return f"{self.channels}"


class RPReLU(AddPReLU):
    r"""ReActNet's PReLU with learnable shifts before and after: ``PReLU_c(x - gamma_c) + zeta_c``.

    ``weight`` is the PReLU slope (0.25 at first, as ``nn.PReLU``); ``gamma`` and ``zeta`` start
    at 0, so a fresh ``RPReLU`` equals a fresh ``nn.PReLU``. ``rprelu(x, shortcut)`` is
    ``rprelu(x + shortcut)`` with :class:`~bnn_lightning.fused_prelu.AddPReLU`'s fast backward
    (the end of a ReActNet block).

    Liu et al., "ReActNet" (ECCV 2020).

    Args:
        channels: Channels of the input (dim 1).
        init: Initial slope.
    """

    def __init__(self, channels: int, init: float = 0.25) -> None:
        super().__init__(_check_channels("RPReLU", channels), init)
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.zeta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, shortcut: Tensor | None = None) -> Tensor:
        gamma = _per_channel(self.gamma, x)
        if shortcut is None:
            out = super().forward(x, -gamma)
        else:
            out = super().forward(x, shortcut - gamma)
        return out + _per_channel(self.zeta, out)
