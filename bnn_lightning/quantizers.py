"""Sign functions and their straight-through estimators (STE).

Every quantizer is an ``nn.Module`` with a ``precision`` attribute: 1 for a binary map onto
{-1, +1}, 32 for a real-valued activation. Binary quantizers map 0 to +1 (``torch.sign(0) == 0``
would make a third value). Each docstring states the forward map, the pseudo-gradient used in
backward, and the paper it comes from (following larq's ``larq/quantizers.py``).

Quantizers are resolved from YAML-friendly specs by :func:`get_quantizer`: a short name
(``"ste_sign"``), a class path (``"bnn_lightning.quantizers.SteSign"``), a mapping with
``class_path`` / ``init_args`` as LightningCLI writes it, an instance, or ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bnn_lightning.registry import Registry

__all__ = [
    "QUANTIZERS",
    "ApproxSign",
    "Clamp",
    "LeakyClip",
    "MagnitudeAwareSign",
    "Quantizer",
    "QuantizerSpec",
    "ReLU",
    "SteSign",
    "SwishSign",
    "binary_sign",
    "get_quantizer",
    "quantizer_name",
]


def binary_sign(x: Tensor) -> Tensor:
    """Sign with ``sign(0) = +1`` (and ``-0.0 -> +1``), in the dtype of ``x``.

    Eager, computed as ``2 * (x >= 0) - 1`` with an in-place comparison and int8 arithmetic: on
    CPU this is several times faster than ``torch.where`` with scalar branches or a ``bool``
    mask. Under ``torch.compile`` it is ``torch.where``, which the compiler fuses into one
    vectorised loop (its CPU code generator leaves loops with int8 arithmetic scalar).
    """
    if torch.compiler.is_compiling():
        return torch.where(x.detach() >= 0, 1.0, -1.0).to(x.dtype)
    return x.detach().clone().ge_(0).to(torch.int8).mul_(2).sub_(1).to(x.dtype)


class _SteSignFn(torch.autograd.Function):
    """sign forward, ``grad * 1[|x| <= clip]`` backward; saves only a boolean mask."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, clip: float) -> Tensor:
        ctx.save_for_backward(x.abs() <= clip)
        return binary_sign(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None


class _ApproxSignFn(torch.autograd.Function):
    """sign forward, ``grad * max(2 - 2|x|, 0)`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (2.0 - 2.0 * x.abs()).clamp_min(0.0)


class _SwishSignFn(torch.autograd.Function):
    """sign forward, derivative of ``2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return binary_sign(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        bx = ctx.beta * x
        grad = ctx.beta * (2.0 - bx * torch.tanh(bx / 2.0)) / (1.0 + torch.cosh(bx))
        return grad_output * grad, None


class Quantizer(nn.Module):
    """Base class: ``precision`` is 1 for binary quantizers and 32 for real-valued ones.

    ``unit_output`` is True where every output is exactly -1 or +1 (no scale), which lets binary
    layers keep the quantized activation at one byte for backward.
    """

    precision: ClassVar[int] = 32
    unit_output: ClassVar[bool] = False


class SteSign(Quantizer):
    r"""Sign with the clipped straight-through estimator.

    Forward: ``q(x) = +1 if x >= 0 else -1``.
    Backward: ``dq/dx = 1 if |x| <= clip else 0``.

    ``BinActive`` of the HolmesShuan collection; Courbariaux et al., "BinaryConnect" (2015) and
    Hubara et al., "Binarized Neural Networks" (2016); Rastegari et al., "XNOR-Net" (2016).

    Args:
        clip: Half-width of the interval where the gradient passes.
    """

    precision = 1
    unit_output = True

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        if clip <= 0:
            raise ValueError(f"SteSign clip must be positive, got {clip}; use e.g. clip=1.0.")
        self.clip = float(clip)

    def forward(self, x: Tensor) -> Tensor:
        return _SteSignFn.apply(x, self.clip)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


class ApproxSign(Quantizer):
    r"""Sign with Bi-Real Net's piecewise-polynomial pseudo-gradient.

    Forward: ``q(x) = +1 if x >= 0 else -1``.
    Backward: ``dq/dx = 2 - 2|x|`` for ``|x| <= 1``, else 0 (the derivative of the
    piecewise quadratic ``2x + x^2 sign(-x)`` that approximates sign).

    Liu et al., "Bi-Real Net" (ECCV 2018).
    """

    precision = 1
    unit_output = True

    def forward(self, x: Tensor) -> Tensor:
        return _ApproxSignFn.apply(x)


class SwishSign(Quantizer):
    r"""Sign with the SignSwish pseudo-gradient.

    Forward: ``q(x) = +1 if x >= 0 else -1``.
    Backward: ``dq/dx = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))``, the
    derivative of ``2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1``.

    Darabi et al., "BNN+: Improved Binary Network Training" (2018); larq's ``swish_sign``.

    Args:
        beta: Sharpness of the swish; larger approaches the true sign.
    """

    precision = 1
    unit_output = True

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"SwishSign beta must be positive, got {beta}; use e.g. beta=5.0.")
        self.beta = float(beta)

    def forward(self, x: Tensor) -> Tensor:
        return _SwishSignFn.apply(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class MagnitudeAwareSign(Quantizer):
    r"""Weight sign scaled by the mean magnitude of each output channel.

    Forward: ``q(w) = mean_{c,h,w}(|w|) * sign(w)``, the mean taken per output channel (dim 0)
    and detached from the graph.
    Backward: ``dq/dw = mean(|w|) * 1[|w| <= clip]`` (the clipped STE, times the scale).

    Liu et al., "Bi-Real Net" (ECCV 2018); Liu et al., "ReActNet" (ECCV 2020); larq's
    ``MagnitudeAwareSign``. The scale folds into the following BatchNorm at inference, so the
    weights stay 1-bit.

    Args:
        clip: Half-width of the interval where the gradient passes.
    """

    precision = 1

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        if clip <= 0:
            raise ValueError(
                f"MagnitudeAwareSign clip must be positive, got {clip}; use e.g. clip=1.0."
            )
        self.clip = float(clip)

    @staticmethod
    def scale(w: Tensor) -> Tensor:
        """Per-output-channel ``mean|w|``, shaped to broadcast against ``w``, detached."""
        dims = tuple(range(1, w.dim()))
        return w.detach().abs().mean(dim=dims, keepdim=True) if dims else w.detach().abs()

    def forward(self, x: Tensor) -> Tensor:
        return self.scale(x) * _SteSignFn.apply(x, self.clip)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


class LeakyClip(Quantizer):
    r"""Leaky clip, a real-valued step of the HolmesShuan collection's activation curriculum.

    Forward: ``q(x) = x`` for ``|x| <= 1``, else ``0.1 x + 0.9 sign(x)``.
    Backward: 1 inside ``[-1, 1]``, ``slope`` outside.

    Args:
        slope: Slope outside ``[-1, 1]`` (the HolmesShuan collection uses 0.1).
    """

    def __init__(self, slope: float = 0.1) -> None:
        super().__init__()
        self.slope = float(slope)

    def forward(self, x: Tensor) -> Tensor:
        outside = self.slope * x + (1.0 - self.slope) * torch.sign(x)
        return torch.where(x.abs() > 1.0, outside, x)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


class Clamp(Quantizer):
    """``HardTanh``: clamp to ``[-1, 1]`` (gradient 1 inside, 0 outside); the curriculum's last
    real-valued step before sign."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(-1.0, 1.0)


class ReLU(Quantizer):
    """ReLU: the curriculum's first, full-precision step (HolmesShuan's ``BinActive(False)``)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


QUANTIZERS: Registry[type[nn.Module]] = Registry(
    "quantizer",
    {
        "ste_sign": SteSign,
        "approx_sign": ApproxSign,
        "swish_sign": SwishSign,
        "magnitude_aware_sign": MagnitudeAwareSign,
        "leaky_clip": LeakyClip,
        "clamp": Clamp,
        "relu": ReLU,
    },
    base=nn.Module,
    example="bnn_lightning.quantizers.SteSign",
    alternatives=("null for full precision",),
)
"""Quantizers by short name; :meth:`~bnn_lightning.registry.Registry.register` adds one."""

QuantizerSpec = str | Mapping[str, Any] | nn.Module | None


def get_quantizer(spec: QuantizerSpec) -> nn.Module | None:
    """Build a quantizer from a short name, class path, ``class_path`` mapping or instance.

    ``None`` (and the names ``"none"`` / ``"identity"``) mean full precision and return ``None``.

    Raises:
        ValueError: The name is not a known quantizer; the message lists the valid ones.
    """
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        if spec.lower() in ("none", "identity", "null", "float"):
            return None
        return QUANTIZERS.lookup(spec)()
    if isinstance(spec, Mapping) and "class_path" in spec:
        return QUANTIZERS.lookup(str(spec["class_path"]))(**dict(spec.get("init_args") or {}))
    raise QUANTIZERS.error(spec)


def quantizer_name(quantizer: nn.Module | None) -> str:
    """Short registry name of a quantizer (class name when unregistered, ``"none"`` for None)."""
    if quantizer is None:
        return "none"
    for name, cls in QUANTIZERS.items():
        if type(quantizer) is cls:
            return name
    return type(quantizer).__name__
