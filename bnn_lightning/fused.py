"""``conv2d(SteSign(x), MagnitudeAwareSign(w))`` as autograd functions that keep 2 bits an input.

The generic path (quantizer modules, then ``F.conv2d``) is exact but slow on CPU and keeps more
than it needs: comparisons that produce ``bool`` tensors, ``torch.where`` and mixed-dtype
products are several times slower than the convolution's own elementwise work, the weight
quantizer makes a dozen passes over the latent weights, and the float ``+-1`` input that the
convolution saves for backward costs 4 bytes an element (2 under bf16) for 1 bit of information.

* :func:`ste_sign_conv2d`: the sign and the STE mask of each input element are computed with
  in-place float comparisons and kept for backward as one 2-bit code, four to a byte (the sign
  and whether ``|x| <= clip``). Backward rebuilds the exact ``+-1`` input from the codes and
  calls the same ``aten.convolution_backward`` kernel a float convolution uses.
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

__all__ = ["magnitude_aware_sign", "pack_codes", "ste_sign_conv2d", "unpack_codes"]

_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


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


def _bit(ones: Tensor) -> Tensor:
    """``1[ones == 1.0]`` as uint8 for a tensor of 0.0 / 1.0, from its bits: 1.0 is the only
    value whose lowest exponent bit is set (integer shifts vectorise, float compares to
    integer outputs do not)."""
    ints, mantissa, _ = _bits(ones.dtype)
    exponent = ones.view(ints).bitwise_right_shift(mantissa).to(torch.uint8)
    return exponent.bitwise_and_(1)


def pack_codes(codes: Tensor) -> Tensor:
    """Four 2-bit codes (uint8 values 0..3, a flat tensor) to a byte, the first in the low bits."""
    padded = torch.zeros(-(-codes.numel() // 4) * 4, dtype=torch.uint8, device=codes.device)
    padded[: codes.numel()] = codes
    word = padded.view(torch.int32)  # bytes c0 c1 c2 c3 -> bits 0, 8, 16, 24
    word = word.bitwise_or(word.bitwise_right_shift(6))
    word.bitwise_or_(word.bitwise_right_shift(12))
    return word.to(torch.uint8)


def unpack_codes(packed: Tensor, numel: int) -> Tensor:
    """The inverse of :func:`pack_codes`: ``numel`` codes as a flat uint8 tensor."""
    word = packed.to(torch.int32)
    word.bitwise_or_(word.bitwise_left_shift(6))
    word.bitwise_or_(word.bitwise_left_shift(12))
    return word.bitwise_and_(0x03030303).view(torch.uint8)[:numel]


def _signs(positive: Tensor, shift: int, dtype: torch.dtype) -> Tensor:
    """``+1`` where the integers ``positive`` (of ``dtype``'s size) have bit ``bits - 1 -
    shift`` set, else ``-1``, as ``dtype``: that bit moved to the sign bit, the bits below it
    shifted out, XOR the bits of -1.0 (in place)."""
    _, _, minus_one = _bits(dtype)
    return positive.bitwise_left_shift_(shift).bitwise_xor_(minus_one).view(dtype)


def sign_and_codes(x: Tensor, clip: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``sign(x)`` in ``dtype`` (``sign(0) = sign(-0.0) = +1``) and the packed codes
    ``1[x >= 0] + 2 * 1[|x| <= clip]`` of ``x`` (dense) in its memory order."""
    positive = torch.ge(x, 0, out=torch.empty_like(x, dtype=dtype))
    inside = torch.abs(x, out=torch.empty_like(positive, dtype=x.dtype)).le_(clip)
    codes = _bit(positive).add_(_bit(inside), alpha=2)
    ints, mantissa, _ = _bits(dtype)
    lowest_exponent_bit_to_sign = 8 * positive.element_size() - 1 - mantissa
    sign = _signs(positive.view(ints), lowest_exponent_bit_to_sign, dtype)
    return sign, pack_codes(_flat(codes))


def _from_codes(packed: Tensor, layout: tuple[Any, ...]) -> tuple[Tensor, Tensor]:
    """``(sign, inside)`` as +-1 and 0/1 tensors of ``layout = (shape, strides, dtype)``."""
    shape, stride, dtype = layout
    codes = unpack_codes(packed, shape.numel())
    ints = _bits(dtype)[0]
    sign_size = torch.finfo(dtype).bits // 8
    sign = _signs(codes.bitwise_and(1).to(ints), 8 * sign_size - 1, dtype)
    inside = codes.bitwise_right_shift(1).to(dtype)
    return sign.as_strided(shape, stride), inside.as_strided(shape, stride)


def _dense(x: Tensor) -> Tensor:
    """``x``, or a contiguous copy when its elements are not one gap-free block."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


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
    ) -> Tensor:
        dtype = compute_dtype(x)
        x = _dense(x.detach())
        sign, packed = sign_and_codes(x, clip, dtype)
        w = weight.detach().to(dtype)
        b = None if bias is None else bias.detach().to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = F.conv2d(sign, w, b, stride, padding, dilation, groups)
        ctx.save_for_backward(packed, w)
        ctx.conv = (list(stride), list(padding), list(dilation), groups)
        ctx.layout = (sign.shape, sign.stride(), dtype)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        packed, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        sign, inside = _from_codes(packed, ctx.layout)
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out.to(w.dtype),
            sign,
            w,
            [w.shape[0]] if b_dtype is not None else None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [need_x, need_w, need_b and b_dtype is not None],
        )
        if grad_x is not None:
            grad_x = grad_x.mul_(inside).to(x_dtype)
        if grad_w is not None:
            grad_w = grad_w.to(w_dtype)
        if grad_b is not None:
            grad_b = grad_b.to(b_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def ste_sign_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    clip: float,
) -> Tensor:
    """``F.conv2d(SteSign(clip)(x), weight, bias, ...)``, fused; see the module docstring."""
    return _SteSignConv2dFn.apply(x, weight, bias, stride, padding, dilation, groups, clip)


def _next_up(value: float, dtype: torch.dtype) -> float:
    """The smallest ``dtype`` number above ``dtype(value)``, for ``value > 0``."""
    ints = _bits(dtype)[0]
    return float((torch.tensor(value, dtype=dtype).view(ints) + 1).view(dtype))


class _MagnitudeAwareSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, clip: float, dtype: torch.dtype) -> Tensor:
        dims = tuple(range(1, w.dim()))
        scale = w.abs().mean(dim=dims, keepdim=True) if dims else w.abs()
        signs = w.add(0.0).to(dtype)  # -0.0 + 0.0 = +0.0: sign(-0.0) = +1
        ctx.save_for_backward(w, scale)
        ctx.clip = clip
        return torch.copysign(scale.to(dtype), signs, out=signs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        w, scale = ctx.saved_tensors
        grad_w = grad.to(w.dtype, copy=True).mul_(scale)
        edge = _next_up(ctx.clip, w.dtype)  # 0 where w <= -edge or w >= edge: |w| > clip
        hardtanh_backward = torch.ops.aten.hardtanh_backward.grad_input
        return hardtanh_backward(grad_w, w, -edge, edge, grad_input=grad_w), None, None


def magnitude_aware_sign(w: Tensor, clip: float, dtype: torch.dtype) -> Tensor:
    """``MagnitudeAwareSign(clip)(w).to(dtype)``, fused; see the module docstring."""
    return _MagnitudeAwareSignFn.apply(w, clip, dtype)
