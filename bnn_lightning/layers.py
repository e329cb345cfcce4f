"""Binary layers: ``nn.Conv2d`` / ``nn.Linear`` subclasses that quantize input and weight.

As in timm's ``std_conv.py`` a binary layer only changes ``forward``: quantize the input, quantize
the latent weight, then call the plain functional op. The four training modes (the two-stage
recipe of Real-to-Binary, Martinez et al. ICLR 2020, uses two of them) are the same class with
different quantizers:

============================  =================  ==================
mode                          input_quantizer    weight_quantizer
============================  =================  ==================
``float``                     None               None
``binary_activations``        ste_sign           None        (stage 1)
``binary_weights``            None               magnitude_aware_sign
``binary``                    ste_sign           magnitude_aware_sign
============================  =================  ==================

:func:`set_mode` switches every binary layer of a model at once (the stage-2 handoff uses it) and
:func:`get_modes` reports the modes a model is in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn_lightning.fused import (
    compute_dtype,
    kernels_usable,
    magnitude_aware_sign,
    ste_sign_conv2d,
    ste_sign_conv2d_op,
)
from bnn_lightning.quantizers import MagnitudeAwareSign, QuantizerSpec, SteSign, get_quantizer
from bnn_lightning.thresholds import RSign

__all__ = [
    "MODES",
    "BinaryConv2d",
    "BinaryLinear",
    "Mode",
    "QuantizedLayer",
    "binary_layers",
    "get_modes",
    "layer_mode",
    "set_mode",
    "set_quantizers",
]

Mode = Literal["float", "binary_activations", "binary_weights", "binary"]
MODES: tuple[str, ...] = ("float", "binary_activations", "binary_weights", "binary")


class QuantizedLayer:
    """Mixin holding the input and weight quantizers of a binary layer."""

    input_quantizer: nn.Module | None
    weight_quantizer: nn.Module | None

    def _init_quantizers(self, input_quantizer: QuantizerSpec, weight_quantizer: QuantizerSpec):
        self.input_quantizer = get_quantizer(input_quantizer)
        self.weight_quantizer = get_quantizer(weight_quantizer)

    def quantize_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def quantized_weight(self) -> Tensor:
        weight: Tensor = self.weight  # type: ignore[attr-defined]
        return weight if self.weight_quantizer is None else self.weight_quantizer(weight)

    @property
    def input_precision(self) -> int:
        return _precision(self.input_quantizer)

    @property
    def weight_precision(self) -> int:
        return _precision(self.weight_quantizer)


def _precision(quantizer: nn.Module | None) -> int:
    return 32 if quantizer is None else int(getattr(quantizer, "precision", 32))


@contextmanager
def _saved_as_int8(x: Tensor) -> Iterator[None]:
    """Store ``x`` (values exactly +-1) as int8 wherever autograd saves it for backward.

    A float conv saves its input at 4 bytes (2 under bf16 autocast) an element; a binary input
    holds one bit of information, so the binary layer keeps it at 1 byte and restores the exact
    same values in backward. Other saved tensors (the weight) are left alone.
    """
    ptr, shape, dtype = x.data_ptr(), x.shape, x.dtype

    def pack(t: Tensor) -> Any:
        if t.data_ptr() == ptr and t.shape == shape and t.dtype == dtype:
            return t.to(torch.int8)
        return t

    def unpack(t: Any) -> Tensor:
        return t.to(dtype) if isinstance(t, Tensor) and t.dtype == torch.int8 else t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def _compact_input(x: Tensor, quantizer: nn.Module | None) -> tuple[Tensor, Any]:
    """Cast to the autocast dtype up front and pick the context that saves ``x`` as int8."""
    if not (
        getattr(quantizer, "unit_output", False) and torch.is_grad_enabled() and x.requires_grad
    ):
        return x, nullcontext()
    if torch.compiler.is_compiling():  # the compiler plans saved tensors itself
        return x, nullcontext()
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    return x, _saved_as_int8(x)


class BinaryConv2d(QuantizedLayer, nn.Conv2d):
    """``nn.Conv2d`` that computes ``conv2d(input_quantizer(x), weight_quantizer(w))``.

    Args:
        input_quantizer: Activation quantizer spec (see :func:`get_quantizer`), None = float.
        weight_quantizer: Weight quantizer spec, None = float. The latent float weight is what the
            optimizer updates; the quantized weight is what the forward pass uses.
        pad_value: Value of the zero-padding ring. The default 0 is what most BNN papers and the
            HolmesShuan collection use (it is a third value, so the padded border is not strictly
            binary); -1 or +1 keeps the convolution truly binary, as larq's ``pad_values``.
        **kwargs: Everything ``nn.Conv2d`` takes (``groups`` included).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        input_quantizer: QuantizerSpec = "ste_sign",
        weight_quantizer: QuantizerSpec = "magnitude_aware_sign",
        pad_value: float = 0.0,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        if isinstance(self.padding, str):
            raise ValueError(f"BinaryConv2d needs integer padding, got {self.padding!r}.")
        self._init_quantizers(input_quantizer, weight_quantizer)
        self.pad_value = float(pad_value)

    def forward(self, x: Tensor) -> Tensor:
        weight, scale = self._weight()
        quantizer = self.input_quantizer
        if isinstance(quantizer, RSign):  # ReActNet: the threshold first, then its sign
            x, quantizer = quantizer.shift(x), quantizer.quantizer
        if self._fused(quantizer, x):
            x, padding = self._pad(x)  # the pad value is +-1 or 0, so sign() keeps it binary
            return ste_sign_conv2d(
                x, weight, self.bias, self.stride, padding, self.dilation, self.groups,
                cast(SteSign, quantizer).clip, scale,
            )  # fmt: skip
        if self._fused_compiled(quantizer, x):  # the same kernels as one op for the compiler
            x, padding = self._pad(x)
            dtype = compute_dtype(x)
            conv = (list(self.stride), list(padding), list(self.dilation), self.groups)
            int8 = type(self.weight_quantizer) is MagnitudeAwareSign
            clip = cast(SteSign, quantizer).clip
            return ste_sign_conv2d_op(x, weight.to(dtype), *conv, clip, int8)[0]
        x, padding = self._pad(x if quantizer is None else quantizer(x))
        x, saving = _compact_input(x, quantizer)
        with saving:
            return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def _weight(self) -> tuple[Tensor, Tensor | None]:
        """The quantized weight and, for ``MagnitudeAwareSign`` (fused, already in the conv's
        dtype), its per-channel scale."""
        quantizer = self.weight_quantizer
        if (
            type(quantizer) is MagnitudeAwareSign
            and self.weight.device.type in ("cpu", "cuda")
            and not torch.compiler.is_compiling()
        ):
            dtype = compute_dtype(self.weight)
            return magnitude_aware_sign(self.weight, quantizer.clip, dtype)
        return self.quantized_weight(), None

    def _fused(self, quantizer: nn.Module | None, x: Tensor) -> bool:
        """Whether the fused sign+conv kernel applies (clipped STE, binary padding, eager,
        a device with autocast, so not the meta device that ``summary`` counts on)."""
        return (
            type(quantizer) is SteSign
            and x.device.type in ("cpu", "cuda")
            and self.pad_value in (0.0, 1.0, -1.0)
            and not torch.compiler.is_compiling()
        )

    def _fused_compiled(self, quantizer: nn.Module | None, x: Tensor) -> bool:
        """Whether a compiled step runs :func:`ste_sign_conv2d_op` (the eager kernels, one opaque
        op): clipped STE, binary padding, no bias, a dense 4-D input (NCHW or channels_last) on
        a CPU where the kernels handle its dtype."""
        return (
            torch.compiler.is_compiling()
            and type(quantizer) is SteSign
            and self.pad_value in (0.0, 1.0, -1.0)
            and self.bias is None
            and x.device.type == "cpu"
            and x.dim() == 4
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            and kernels_usable(compute_dtype(x))
        )

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Apply a non-zero ``pad_value`` explicitly; zero padding stays inside the conv."""
        padding = cast(tuple[int, int], self.padding)
        if self.pad_value == 0.0 or not any(padding):
            return x, padding
        ph, pw = padding
        return F.pad(x, (pw, pw, ph, ph), value=self.pad_value), (0, 0)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", pad_value={self.pad_value}" if self.pad_value else "")


class BinaryLinear(QuantizedLayer, nn.Linear):
    """``nn.Linear`` that computes ``linear(input_quantizer(x), weight_quantizer(w))``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        input_quantizer: QuantizerSpec = "ste_sign",
        weight_quantizer: QuantizerSpec = "magnitude_aware_sign",
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self._init_quantizers(input_quantizer, weight_quantizer)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


def binary_layers(model: nn.Module) -> list[tuple[str, QuantizedLayer]]:
    """All quantized layers of ``model`` with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLayer)]


def layer_mode(layer: QuantizedLayer) -> Mode:
    """The mode of one layer, from the precision of its quantizers."""
    binary_in, binary_w = layer.input_precision == 1, layer.weight_precision == 1
    if binary_in and binary_w:
        return "binary"
    if binary_in:
        return "binary_activations"
    return "binary_weights" if binary_w else "float"


def get_modes(model: nn.Module) -> Counter[str]:
    """How many quantized layers of ``model`` are in each mode."""
    return Counter(layer_mode(layer) for _, layer in binary_layers(model))


_KEEP = object()


def set_quantizers(
    model: nn.Module,
    input_quantizer: QuantizerSpec | object = _KEEP,
    weight_quantizer: QuantizerSpec | object = _KEEP,
) -> int:
    """Replace the quantizers of every binary layer; an argument left out is kept as it is.

    Each layer gets its own quantizer instance. An :class:`~bnn_lightning.RSign` input quantizer
    keeps its learned thresholds: the new quantizer replaces the sign inside it.
    Returns the number of layers changed.
    """
    layers = binary_layers(model)
    for _, layer in layers:
        if input_quantizer is not _KEEP:
            new = get_quantizer(input_quantizer)  # type: ignore[arg-type]
            current = layer.input_quantizer
            if isinstance(current, RSign) and not isinstance(new, RSign):
                current.quantizer, new = new, current
            layer.input_quantizer = new
        if weight_quantizer is not _KEEP:
            layer.weight_quantizer = get_quantizer(weight_quantizer)  # type: ignore[arg-type]
    return len(layers)


def set_mode(
    model: nn.Module,
    mode: Mode,
    activation: QuantizerSpec = "ste_sign",
    weight: QuantizerSpec = "magnitude_aware_sign",
) -> int:
    """Put every binary layer of ``model`` into ``mode`` (one of :data:`MODES`).

    Args:
        model: Any module; only its :class:`QuantizedLayer` children change.
        mode: ``float``, ``binary_activations``, ``binary_weights`` or ``binary``.
        activation: Quantizer spec used where activations are binarized.
        weight: Quantizer spec used where weights are binarized.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    binary_in = mode in ("binary_activations", "binary")
    binary_w = mode in ("binary_weights", "binary")
    return set_quantizers(
        model,
        input_quantizer=activation if binary_in else None,
        weight_quantizer=weight if binary_w else None,
    )
