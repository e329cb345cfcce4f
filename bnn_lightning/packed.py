"""Packed-inference reference: a binary convolution computed with XNOR and popcount.

For ``a, w`` in {-1, +1}^K packed as bits (1 = +1, see :mod:`bnn_lightning.bits`),
``dot(a, w) = K - 2 * popcount(a_bits XOR w_bits)``: the XOR marks the disagreeing positions.
:class:`PackedBinaryConv2d` packs the input channels of each group into int64 words, gathers the
``kh * kw`` words of every output position (im2col on words) and reduces
``popcount(col XOR weight)`` over them; the integer result is scaled per output channel
(``MagnitudeAwareSign``'s mean ``|w|``, 1 for a plain sign) and the bias added.

Padding: the ring of a convolution is not binary when it is zero. ``pad_value`` +1 or -1 packs
the ring as that value, so the result is exact by construction. ``pad_value`` 0 (the
``BinaryConv2d`` default) packs the ring as -1 and then adds back, at each output position,
the sum of the weights that landed on the ring (``conv2d(ring_mask, sum_c w)``, an exact integer),
which removes the -1s' contribution: the result equals the zero-padded float convolution.

Speed: the popcount is a SWAR bit count (:func:`~bnn_lightning.bits.popcount64`). Eager mode runs
it as a dozen separate tensor ops over a materialized ``(N, out, words, positions)`` tensor;
``use_compile=True`` lets ``torch.compile`` fuse packing, XOR, popcount and the reduction into one
kernel (slow first call per input shape).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn_lightning.bits import pack_bits, popcount64
from bnn_lightning.layers import BinaryConv2d, QuantizedLayer
from bnn_lightning.thresholds import RSign

__all__ = ["PackedBinaryConv2d", "binary_weight_parts", "convert_to_packed", "xnor_conv2d"]

_CHUNK_ELEMENTS = 1 << 22  # eager: bound the materialized XOR tensor to 32 MiB of int64


def binary_weight_parts(layer: QuantizedLayer) -> tuple[Tensor, Tensor]:
    """The effective weight of a binary-weight layer split into {-1, +1} signs and scale.

    Returns ``(signs, scale)`` with ``quantized_weight() == scale[o] * signs`` exactly
    (``scale`` of shape ``(out,)``, float32).

    Raises:
        ValueError: The weight quantizer is not binary, or its output is not ``+-scale`` per
            output channel.
    """
    if layer.weight_precision != 1:
        raise ValueError(
            f"{type(layer).__name__} has weight quantizer {layer.weight_quantizer!r}, not a binary "
            "one; set weight_quantizer='magnitude_aware_sign' (or set_mode(..., 'binary'))."
        )
    with torch.no_grad():
        weight = layer.quantized_weight().float()
    magnitude = weight.abs()
    scale = magnitude.flatten(1).amax(1)
    if not torch.equal(magnitude, scale.view(-1, *[1] * (weight.dim() - 1)).expand_as(weight)):
        raise ValueError(
            f"The weight quantizer {layer.weight_quantizer!r} does not output +-scale per output "
            "channel, so its weights cannot be stored as 1 bit plus a scale."
        )
    return torch.where(weight >= 0, 1.0, -1.0), scale


def _columns(
    words: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> Tensor:
    """im2col on packed words: ``(N, g, Wg, H, W) -> (N, g, Wg * kh * kw, Hout * Wout)``."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    taps = [
        words[
            ..., i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    return torch.stack(taps, dim=3).flatten(2, 3).flatten(-2)


def xnor_conv2d(
    x: Tensor,
    weight_bits: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    pad_sign: float = -1.0,
    max_elements: int = 0,
) -> Tensor:
    """Count the disagreeing bits of ``sign(x)`` and the packed weights at every output.

    Args:
        x: Real input ``(N, C, H, W)``; its signs are the binary activations (0 counts as +1).
        weight_bits: ``(groups, out // groups, words * kh * kw)`` int64 words, the weight packed
            along its input-channel dimension, then ordered (word, kh, kw).
        kernel, stride, padding, dilation: As in ``F.conv2d``.
        pad_sign: -1.0 or +1.0, the binary value the padding ring packs as.
        max_elements: Bound on the XOR tensor materialized per step, reached by splitting the
            output channels (0 = all at once, what ``torch.compile`` wants).

    Returns:
        int64 ``(N, out, Hout, Wout)`` counts of mismatches (packing pads cancel out).
    """
    n, channels, height, width = x.shape
    groups, group_out, _ = weight_bits.shape
    (ph, pw), (kh, kw), (dh, dw), (sh, sw) = padding, kernel, dilation, stride
    out_hw = (
        (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
        (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1,
    )
    x = F.pad(x, (pw, pw, ph, ph), value=pad_sign).unflatten(1, (groups, channels // groups))
    words, _ = pack_bits(x, torch.int64, dim=2)
    cols = _columns(words, kernel, stride, dilation, out_hw).unsqueeze(2)  # (N, g, 1, K, L)
    per_channel = cols[0, 0, 0].numel() * n * groups
    step = max(1, max_elements // per_channel) if max_elements else group_out
    counts = [
        popcount64(cols ^ weight_bits[None, :, o : o + step, :, None]).sum(3)
        for o in range(0, group_out, step)
    ]
    return torch.cat(counts, dim=2).reshape(n, groups * group_out, *out_hw)


_compiled_xnor_conv2d = None


def _xnor_conv2d_compiled(*args: Any) -> Tensor:
    """``xnor_conv2d`` through ``torch.compile`` (one static graph per layer shape)."""
    global _compiled_xnor_conv2d
    if _compiled_xnor_conv2d is None:
        _compiled_xnor_conv2d = torch.compile(xnor_conv2d, dynamic=False)
    # Every layer shape is its own graph; a ResNet has more than the default limit of 8.
    with torch._dynamo.config.patch(recompile_limit=64):
        return _compiled_xnor_conv2d(*args)


class PackedBinaryConv2d(nn.Module):
    """Inference-only binary convolution on packed weights and packed activations.

    Computes ``scale[o] * conv2d(sign(x - threshold), signs)[o] + bias[o]`` with XNOR and
    popcount (module doc). Weights are kept as int64 words only; activations are packed on the fly.

    Args:
        signs: The {-1, +1} weight ``(out, in // groups, kh, kw)``.
        scale: Per-output-channel scale ``(out,)``; None means 1.
        bias: Optional bias ``(out,)``.
        stride, padding, dilation, groups: As in ``nn.Conv2d``.
        pad_value: 0 (zero padding, corrected exactly), -1 or +1 (padded as that value).
        use_compile: Run the XNOR-popcount kernel through ``torch.compile`` (fast after a slow first
            call per input shape); False runs eager PyTorch ops.
        threshold: Per-input-channel threshold ``(in,)`` subtracted before the sign (ReActNet's
            :class:`~bnn_lightning.RSign`); None means 0.
    """

    weight_bits: Tensor
    scale: Tensor
    bias: Tensor | None
    ring_weight: Tensor | None
    threshold: Tensor | None

    def __init__(
        self,
        signs: Tensor,
        scale: Tensor | None = None,
        bias: Tensor | None = None,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        pad_value: float = 0.0,
        use_compile: bool = False,
        threshold: Tensor | None = None,
    ) -> None:
        super().__init__()
        if pad_value not in (-1.0, 0.0, 1.0):
            raise ValueError(f"pad_value must be -1, 0 or +1 for a packed conv, got {pad_value}.")
        out_channels, group_in, kh, kw = signs.shape
        self.in_channels, self.out_channels = group_in * groups, out_channels
        self.kernel_size, self.groups = (kh, kw), groups
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.pad_value, self.use_compile = float(pad_value), use_compile
        self.taps = group_in * kh * kw
        words, _ = pack_bits(signs, torch.int64, dim=1)
        self.register_buffer("weight_bits", words.reshape(groups, out_channels // groups, -1))
        ones = torch.ones(out_channels)
        self.register_buffer("scale", ones if scale is None else scale.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        ring = pad_value == 0.0 and any(self.padding)
        self.register_buffer("ring_weight", signs.float().sum(1, keepdim=True) if ring else None)
        threshold = None if threshold is None else threshold.detach().float().clone()
        self.register_buffer("threshold", threshold)

    @classmethod
    def from_binary_conv(cls, layer: BinaryConv2d, use_compile: bool = False) -> PackedBinaryConv2d:
        """Packed copy of a ``BinaryConv2d`` whose input and weights are both binary.

        Raises:
            ValueError: The layer's input or weight quantizer is not binary.
        """
        if layer.input_precision != 1:
            raise ValueError(
                f"Cannot pack {layer}: its input quantizer {layer.input_quantizer!r} is not "
                "binary; only layers in mode 'binary' run on XNOR-popcount."
            )
        signs, scale = binary_weight_parts(layer)
        bias = None if layer.bias is None else layer.bias.detach()
        padding = layer.padding  # a tuple: BinaryConv2d rejects string padding
        rsign = layer.input_quantizer
        threshold = rsign.alpha if isinstance(rsign, RSign) else None
        return cls(
            signs, scale, bias, layer.stride, padding, layer.dilation,  # type: ignore[arg-type]
            layer.groups, layer.pad_value, use_compile, threshold,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        if self.threshold is not None:
            x = x - self.threshold.to(x.dtype).view(1, -1, 1, 1)
        pad_sign = 1.0 if self.pad_value == 1.0 else -1.0
        args = (x, self.weight_bits, self.kernel_size, self.stride, self.padding, self.dilation)
        if self.use_compile:
            mismatches = _xnor_conv2d_compiled(*args, pad_sign)
        else:
            mismatches = xnor_conv2d(*args, pad_sign, _CHUNK_ELEMENTS)
        y = (self.taps - 2 * mismatches).to(x.dtype)
        if self.ring_weight is not None:
            y = y + self._ring_correction(x)
        y = y * self.scale.view(1, -1, 1, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def _ring_correction(self, x: Tensor) -> Tensor:
        """Sum of the weights on the padding ring at each output (exact small integers)."""
        (ph, pw), (height, width) = self.padding, x.shape[-2:]
        ring = F.pad(x.new_zeros(1, 1, height, width), (pw, pw, ph, ph), value=1.0)
        weight = self.ring_weight.to(x.dtype)  # type: ignore[union-attr]
        return F.conv2d(ring, weight, stride=self.stride, dilation=self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"pad_value={self.pad_value}, use_compile={self.use_compile}"
        )


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[-1])


def convert_to_packed(model: nn.Module, use_compile: bool = False) -> int:
    """Replace every fully binary ``BinaryConv2d`` of ``model`` by a :class:`PackedBinaryConv2d`.

    Layers with a real-valued input or weight quantizer stay as they are. Returns the number of
    layers replaced.
    """
    targets = [
        name
        for name, module in model.named_modules()
        if name
        and isinstance(module, BinaryConv2d)
        and module.input_precision == 1
        and module.weight_precision == 1
    ]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(
            parent, child, PackedBinaryConv2d.from_binary_conv(getattr(parent, child), use_compile)
        )
    return len(targets)
