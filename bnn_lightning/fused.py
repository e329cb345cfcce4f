"""``conv2d(SteSign(x), MagnitudeAwareSign(w))`` as autograd functions that keep 2 bits an input.

The generic path (quantizer modules, then ``F.conv2d``) is exact but slow on CPU and keeps more
than it needs: comparisons that produce ``bool`` tensors, ``torch.where`` and mixed-dtype
products are several times slower than the convolution's own elementwise work, the weight
quantizer makes a dozen passes over the latent weights, and the float ``+-1`` input that the
convolution saves for backward costs 4 bytes an element (2 under bf16) for 1 bit of information.

* :func:`ste_sign_conv2d`: the sign and the STE mask of each input element are computed with
  in-place float comparisons and kept for backward as one 2-bit code, four to a byte (the sign
  and whether ``|x| <= clip``). Backward rebuilds the exact ``+-1`` input from the codes and
  calls the same ``aten.convolution_backward`` kernel a float convolution uses. Under bf16 on a
  CPU with VNNI (channels_last, a ``MagnitudeAwareSign`` weight), the forward convolution runs in
  int8: the sign kernel writes the input as bytes, and ``+-1`` times ``+-scale[c]`` is an integer
  times ``scale[c]``, exact in int32 and rounded once to bf16 as the bf16 convolution rounds it
  (:func:`bnn_lightning.fused_cpu.int8_conv`).
* :func:`ste_sign_conv2d_op`: the same forward and backward as two ``torch.library`` custom ops
  (``bnn_lightning::ste_sign_conv2d`` and its backward), which a ``torch.compile``'d step calls
  as opaque kernels while inductor fuses the BatchNorm, PReLU and residual work around them.
  Without them the compiled step materialised the STE-masked gradient ahead of each BatchNorm
  backward as a full-size fp32 buffer: 1.056-1.073x the float step's time against 0.968-0.99x
  with them (ResNet-18 CIFAR w64, batch 128, bf16 + channels_last, 2 cores, one process per
  variant, binary and float interleaved).
* :func:`magnitude_aware_sign`: ``mean|w| * sign(w)`` made directly in the convolution's dtype
  (under autocast, what autocast would cast it to), and the latent gradient
  ``grad * mean|w| * 1[|w| <= clip]`` in two passes from the latent weight itself: nothing is
  saved, and nothing is binarized again.

The values are identical to the generic path (tested bit for bit, fp32 and bf16 autocast,
channels_last): forward ``conv2d(sign(x), w)`` with ``sign(0) = sign(-0.0) = +1``; backward
``dL/dx = conv_input_grad * 1[|x| <= clip]`` and ``dL/dw = conv_weight_grad``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnn_lightning import fused_cpu

__all__ = [
    "kernels_usable",
    "magnitude_aware_sign",
    "pack_codes",
    "ste_sign_conv2d",
    "ste_sign_conv2d_op",
    "unpack_codes",
]

_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_PACK = (1 << 24) | (1 << 18) | (1 << 12) | (1 << 6)
_UNPACK = 1 | (1 << 14) | (1 << 28) | (1 << 42)
_LANES = 0x0003_0003_0003_0003


@functools.cache
def _bits(dtype: torch.dtype) -> tuple[torch.dtype, int, int]:
    """``(int type of the same size, mantissa bits, bit pattern of -1.0)`` of a float dtype."""
    ints = _INTS[torch.finfo(dtype).bits // 8]
    mantissa = round(-math.log2(torch.finfo(dtype).eps))
    return ints, mantissa, int(torch.tensor(-1.0, dtype=dtype).view(ints))


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype autocast gives a conv operand ``t`` (``t.dtype`` when autocast is off)."""
    device = t.device.type
    if torch.is_autocast_enabled(device) and t.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return t.dtype


def _flat(t: Tensor) -> Tensor:
    """The elements of a fresh dense tensor (no gaps, no overlap) in memory order."""
    return t.as_strided((t.numel(),), (1,))


def _bit7(ones: Tensor) -> Tensor:
    """uint8 with bit 7 set where a tensor of 0.0 / 1.0 holds 1.0, else 0: the lowest exponent
    bit of the float, set in 1.0 only, moved to bit 7 of the low byte (integer shifts and
    conversions vectorise; comparisons with integer outputs do not)."""
    ints, mantissa, _ = _bits(ones.dtype)
    exponent = ones.view(ints)
    if mantissa != 7:  # already there in bf16; a narrowing conversion keeps the low byte
        exponent = exponent.bitwise_right_shift(mantissa - 7)
    return exponent.to(torch.uint8)


def pack_codes(codes: Tensor) -> Tensor:
    """Four 2-bit codes (uint8 values 0..3, a flat tensor) to a byte, the first in the low bits."""
    padded = _padded(codes.numel(), codes.device)
    padded[: codes.numel()] = codes
    return _pack(padded)


def _padded(numel: int, device: torch.device) -> Tensor:
    """A uint8 buffer for ``numel`` codes, rounded up to whole bytes of packed codes."""
    padded = torch.empty(-(-numel // 4) * 4, dtype=torch.uint8, device=device)
    padded[numel:] = 0
    return padded


def _pack(padded: Tensor) -> Tensor:
    """Codes ``c0..c3`` at bits 0, 8, 16, 24 of each little-endian word, multiplied into
    ``c0 | c1 << 2 | c2 << 4 | c3 << 6`` at bit 24: the partial products below it are 2-bit
    fields at distinct places (no carries), those above fall off the 32-bit word."""
    word = padded.view(torch.int32).mul(_PACK)  # wraps around (two's complement)
    return word.bitwise_right_shift_(24).to(torch.uint8)  # narrowing keeps the low byte


def _lanes(packed: Tensor, numel: int) -> Tensor:
    """The codes as int16 values 0..3 (the inverse of :func:`pack_codes`): each byte
    multiplied into four non-overlapping copies 14 bits apart, field ``k`` landing at bit
    ``16 k`` of a 64-bit word, the rest masked off."""
    word = packed.to(torch.int64).mul_(_UNPACK).bitwise_and_(_LANES)
    return word.view(torch.int16)[:numel]


def unpack_codes(packed: Tensor, numel: int) -> Tensor:
    """The inverse of :func:`pack_codes`: ``numel`` codes as a flat uint8 tensor."""
    return _lanes(packed, numel).to(torch.uint8)


def sign_and_codes(x: Tensor, clip: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``sign(x)`` in ``dtype`` (``sign(0) = sign(-0.0) = +1``) and the packed codes
    ``1[x >= 0] + 2 * 1[|x| <= clip]`` of ``x`` (dense) in its memory order."""
    if x.dtype == dtype and fused_cpu.usable(x.device, dtype):
        return fused_cpu.sign_codes(x, clip)
    positive = torch.ge(x, 0, out=torch.empty_like(x, dtype=dtype))
    inside = torch.abs(x, out=torch.empty_like(positive, dtype=x.dtype)).le_(clip)
    padded = _padded(x.numel(), x.device)
    codes = padded[: x.numel()].as_strided(x.shape, positive.stride())  # x's memory order
    high = _bit7(inside).bitwise_right_shift_(7)
    torch.add(_bit7(positive).bitwise_right_shift_(7), high, alpha=2, out=codes)
    ints, mantissa, minus_one = _bits(dtype)
    to_sign_bit = 8 * positive.element_size() - 1 - mantissa  # the lowest exponent bit
    sign = positive.view(ints).bitwise_left_shift_(to_sign_bit).bitwise_xor_(minus_one)
    return sign.view(dtype), _pack(padded)


def _from_codes(packed: Tensor, layout: tuple[Any, ...]) -> tuple[Tensor, Tensor]:
    """``(sign, inside)`` in ``layout = (shape, strides, dtype)``: ``sign`` as +-1 values of
    ``dtype``, ``inside`` as integers of its size, all ones where ``|x| <= clip`` else 0 (an
    AND with a gradient's bits keeps it or zeroes it)."""
    shape, stride, dtype = layout
    ints, _, minus_one = _bits(dtype)
    lanes = _lanes(packed, shape.numel())
    wide = lanes if ints == torch.int16 else lanes.to(ints)
    sign_bit = 8 * wide.element_size() - 1
    sign = wide.bitwise_left_shift(sign_bit).bitwise_xor_(minus_one).view(dtype)
    inside = lanes.bitwise_left_shift(14).bitwise_right_shift_(15)  # bit 1 -> 0 / -1
    inside = inside if ints == torch.int16 else inside.to(ints)
    return sign.as_strided(shape, stride), inside.as_strided(shape, stride)


def _dense(x: Tensor) -> Tensor:
    """``x``, or a contiguous copy when its elements are not one gap-free block."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


# Output positions (batch x height x width) from which the int8 convolution, its weight packed
# anew each step, beats the bf16 one: ResNet-18's binary convs at batch 8-64 on AMD EPYC Zen 5
# with 2 threads measured 0.56-0.97x the bf16 time from 2048 positions, 0.74-2.9x below.
INT8_MIN_POSITIONS = 2048


def _positions(x: Tensor, weight: Tensor, conv: tuple[Any, ...]) -> int:
    """Batch x output height x width of ``conv2d(x, weight, *conv)``."""
    stride, padding, dilation, _ = conv
    count = x.shape[0]
    for size, k, s, p, d in zip(
        x.shape[2:], weight.shape[2:], stride, padding, dilation, strict=True
    ):
        count *= (size + 2 * p - d * (k - 1) - 1) // s + 1
    return count


def _int8(x: Tensor, weight: Tensor, conv: tuple[Any, ...], dtype: torch.dtype,
          weight_scale: Tensor | None, bias: Tensor | None) -> bool:  # fmt: skip
    """Whether the forward convolution runs in int8 (:func:`fused_cpu.int8_conv`): bf16 on the
    CPU, channels_last, a ``MagnitudeAwareSign`` weight, no bias, enough output positions."""
    return (
        weight_scale is not None
        and bias is None
        and dtype == torch.bfloat16
        and x.dtype == dtype
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and fused_cpu.usable(x.device, dtype)
        and _positions(x, weight, conv) >= INT8_MIN_POSITIONS
        and fused_cpu.int8_conv()
    )


def _sign_conv(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    conv: tuple[Any, ...],
    clip: float,
    scale: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``conv2d(sign(x), w, b, *conv)`` in ``w``'s dtype, the packed codes of ``x`` and the sign
    tensor (for its shape and strides). With ``scale`` (``w = +-scale[c]``, :func:`_int8` true)
    the convolution runs in int8 and the sign tensor is the uint8 one it read."""
    if scale is not None:
        u8, packed = fused_cpu.sign_codes(x, clip, u8=True)
        weight_signs = fused_cpu.weight_signs(_dense(w))
        out = fused_cpu.int8_conv2d(u8, weight_signs, scale.float().reshape(-1), *conv)
        return out, packed, u8
    sign, packed = sign_and_codes(x, clip, w.dtype)
    with torch.autocast(x.device.type, enabled=False):
        out = F.conv2d(sign, w, b, *conv)
    return out, packed, sign


class _SteSignConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
        groups: int,
        clip: float,
        weight_scale: Tensor | None,
    ) -> Tensor:
        dtype = compute_dtype(x)
        x = _dense(x.detach())
        w = weight.detach().to(dtype)
        b = None if bias is None else bias.detach().to(dtype)
        conv = (list(stride), list(padding), list(dilation), groups)
        int8 = _int8(x, w, conv, dtype, weight_scale, bias)
        scale = weight_scale.detach() if int8 and weight_scale is not None else None
        out, packed, sign = _sign_conv(x, w, b, conv, clip, scale)
        if weight_scale is None or w.element_size() <= 2:
            ctx.save_for_backward(packed, w, None)
        else:  # w = +-weight_scale in 4 bytes or more: keep its signs, a byte each
            ints = _bits(dtype)[0]
            negative = w.view(ints).bitwise_right_shift(8 * w.element_size() - 1).to(torch.int8)
            ctx.save_for_backward(packed, negative, weight_scale.detach().to(dtype))
        ctx.conv = conv
        ctx.layout = (sign.shape, sign.stride(), dtype)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        packed, w, weight_scale = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        dtype = ctx.layout[2]
        if weight_scale is not None:  # the weight from its signs, bit for bit
            w = torch.copysign(weight_scale, w.to(dtype))
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w, grad_b = _conv_backward(
            grad_out,
            packed,
            w,
            ctx.layout,
            ctx.conv,
            [need_x, need_w, need_b and b_dtype is not None],
        )
        if grad_x is not None:
            grad_x = grad_x.to(x_dtype)
        if grad_w is not None:
            grad_w = grad_w.to(w_dtype)
        if grad_b is not None:
            grad_b = grad_b.to(b_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _conv_backward(
    grad_out: Tensor,
    packed: Tensor,
    w: Tensor,
    layout: tuple[Any, ...],
    conv: tuple[Any, ...],
    need: list[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The convolution's gradients from the packed codes: the +-1 input rebuilt in ``layout``,
    ATen's ``convolution_backward``, and the input gradient zeroed where ``|x| > clip``."""
    stride, padding, dilation, groups = conv
    shape, strides, dtype = layout
    kernel = fused_cpu.usable(packed.device, dtype)
    if kernel:
        sign = torch.empty_strided(shape, strides, dtype=dtype, device=packed.device)
        fused_cpu.codes_backward(packed, sign, None)
    else:
        sign = _from_codes(packed, layout)[0]
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_out.to(w.dtype),
        sign,
        w,
        [w.shape[0]] if need[2] else None,
        stride,
        padding,
        dilation,
        False,
        [0, 0],
        groups,
        need,
    )
    if grad_x is not None:  # grad * 1[|x| <= clip]
        if kernel and grad_x.stride() == strides:
            fused_cpu.codes_backward(packed, None, grad_x)
        else:
            inside = _from_codes(packed, layout)[1]
            grad_x.view(inside.dtype).bitwise_and_(inside)
    return grad_x, grad_w, grad_b


@torch.compiler.assume_constant_result
def _kernels_built() -> bool:
    """Whether the CPU kernels are built (a constant for the compiler, decided outside graphs)."""
    return fused_cpu.kernels() is not None


def kernels_usable(dtype: torch.dtype) -> bool:
    """Whether the CPU kernels handle ``dtype`` (bf16, fp16, fp32) and are built; traceable."""
    return dtype in (torch.bfloat16, torch.float16, torch.float32) and _kernels_built()


@torch.library.custom_op("bnn_lightning::ste_sign_conv2d", mutates_args=())
def ste_sign_conv2d_op(
    x: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    clip: float,
    int8: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`ste_sign_conv2d` as one opaque op for ``torch.compile`` (``weight`` in the
    convolution's dtype, ``x`` dense, no bias): ``(conv2d(sign(x), weight), packed codes)``.
    ``int8``: ``weight`` is ``+-scale[c]`` (``MagnitudeAwareSign``), so the int8 convolution may
    run (the eager path's conditions). The codes are what backward keeps of ``x``."""
    conv = (stride, padding, dilation, groups)
    scale = None
    if int8 and _int8(x, weight, conv, weight.dtype, weight, None):  # weight: its own scale
        scale = weight.abs().amax(dim=(1, 2, 3))  # every element of channel c: scale[c]
    out, packed, _ = _sign_conv(x, weight, None, conv, clip, scale)
    return out, packed


@ste_sign_conv2d_op.register_fake
def _(
    x: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    clip: float,
    int8: bool,
) -> tuple[Tensor, Tensor]:
    out = F.conv2d(x.to(weight.dtype), weight, None, stride, padding, dilation, groups)
    return out, x.new_empty(-(-x.numel() // 4), dtype=torch.uint8)


@torch.library.custom_op("bnn_lightning::ste_sign_conv2d_backward", mutates_args=())
def ste_sign_conv2d_backward(
    grad_out: Tensor,
    packed: Tensor,
    weight: Tensor,
    shape: list[int],
    strides: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> tuple[Tensor, Tensor]:
    """The gradients of :func:`ste_sign_conv2d_op` for its input (``shape``, ``strides``, in
    the weight's dtype) and its weight, from the packed codes."""
    layout = (torch.Size(shape), tuple(strides), weight.dtype)
    conv = (stride, padding, dilation, groups)
    grad_x, grad_w, _ = _conv_backward(grad_out, packed, weight, layout, conv, [True, True, False])
    assert grad_x is not None and grad_w is not None
    if grad_x.stride() != tuple(strides):  # the layouts the compiler planned for
        grad_x = weight.new_empty_strided(shape, strides).copy_(grad_x)
    if grad_w.stride() != weight.stride():
        grad_w = torch.empty_like(weight).copy_(grad_w)
    return grad_x, grad_w


@ste_sign_conv2d_backward.register_fake
def _(
    grad_out: Tensor, packed: Tensor, weight: Tensor, shape: list[int], strides: list[int], *_: Any
) -> tuple[Tensor, Tensor]:  # the convolution's arguments do not change the output layouts
    grad_x = weight.new_empty_strided(shape, strides)
    return grad_x, torch.empty_like(weight)


def _op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, weight, stride, padding, dilation, groups, _, _ = inputs
    ctx.save_for_backward(output[1], weight)
    ctx.meta = (list(x.shape), list(x.stride()))
    ctx.x_dtype = x.dtype
    ctx.conv = (stride, padding, dilation, groups)


def _op_backward(ctx: Any, grad_out: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
    packed, weight = ctx.saved_tensors
    grad_x, grad_w = ste_sign_conv2d_backward(grad_out, packed, weight, *ctx.meta, *ctx.conv)
    return grad_x.to(ctx.x_dtype), grad_w, None, None, None, None, None, None


ste_sign_conv2d_op.register_autograd(_op_backward, setup_context=_op_setup)


def ste_sign_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    clip: float,
    weight_scale: Tensor | None = None,
) -> Tensor:
    """``F.conv2d(SteSign(clip)(x), weight, bias, ...)``, fused; see the module docstring.

    ``weight_scale``: where every output channel ``c`` of ``weight`` is ``+-weight_scale[c]``
    (:func:`magnitude_aware_sign`'s output), backward keeps one byte a weight instead of the
    weight.
    """
    return _SteSignConv2dFn.apply(
        x, weight, bias, stride, padding, dilation, groups, clip, weight_scale
    )


def _next_up(value: float, dtype: torch.dtype) -> float:
    """The smallest ``dtype`` number above ``dtype(value)``, for ``value > 0``."""
    ints = _bits(dtype)[0]
    return float((torch.tensor(value, dtype=dtype).view(ints) + 1).view(dtype))


class _MagnitudeAwareSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, clip: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        dims = tuple(range(1, w.dim()))
        scale = w.abs().mean(dim=dims, keepdim=True) if dims else w.abs()
        ctx.save_for_backward(w, scale)
        ctx.clip = clip
        scale_dtype = scale.to(dtype)
        ctx.mark_non_differentiable(scale_dtype)
        if fused_cpu.weights_usable(w, dtype):
            return fused_cpu.binary_weight(w, scale_dtype), scale_dtype
        signs = w.add(0.0).to(dtype)  # -0.0 + 0.0 = +0.0: sign(-0.0) = +1
        return torch.copysign(scale_dtype, signs, out=signs), scale_dtype

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor | None) -> tuple[Tensor, None, None]:
        w, scale = ctx.saved_tensors
        if fused_cpu.weights_usable(w, grad.dtype) and grad.stride() == w.stride():
            return fused_cpu.weight_grad(grad, w, scale, ctx.clip), None, None
        grad_w = grad.to(w.dtype, copy=True).mul_(scale)
        edge = _next_up(ctx.clip, w.dtype)  # 0 where w <= -edge or w >= edge: |w| > clip
        hardtanh_backward = torch.ops.aten.hardtanh_backward.grad_input
        return hardtanh_backward(grad_w, w, -edge, edge, grad_input=grad_w), None, None


def magnitude_aware_sign(w: Tensor, clip: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``MagnitudeAwareSign(clip)(w).to(dtype)``, fused (see the module docstring), and its
    per-output-channel scale ``mean|w|`` in ``dtype`` (no gradient)."""
    return _MagnitudeAwareSignFn.apply(w, clip, dtype)
