"""``conv2d(SteSign(x), w)`` as one autograd function that keeps one byte per input element.

The generic path (quantizer module, then ``F.conv2d``) is exact but pays for it on CPU: comparisons
that produce ``bool`` tensors and ``torch.where`` with scalar branches are several times slower
than the convolution's own elementwise work, and the float ``+-1`` input that the convolution
saves for backward costs 4 bytes an element (2 under bf16). Here the sign and the STE mask are
computed with in-place float comparisons and int8 arithmetic, which vectorise well, and are
stored together as one int8 code per element: ``+-2`` where ``|x| <= clip`` (the gradient passes),
``+-1`` elsewhere. Backward rebuilds the exact ``+-1`` input from the code and calls the same
``aten.convolution_backward`` kernel a float convolution uses.

The values are identical to the generic path: forward ``conv2d(sign(x), w)`` with
``sign(0) = +1``; backward ``dL/dx = conv_input_grad * 1[|x| <= clip]`` and
``dL/dw = conv_weight_grad``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def sign_code(x: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """``(sign, code)`` of ``x`` as int8: ``sign(x)`` with ``sign(0) = +1``, and
    ``code = sign(x) * (1 + 1[|x| <= clip])``."""
    sign = x.detach().clone().ge_(0).to(torch.int8).mul_(2).sub_(1)
    inside = x.detach().abs().le_(clip).to(torch.int8).add_(1)
    return sign, sign * inside


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


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
        dtype = _compute_dtype(x)
        sign, code = sign_code(x, clip)
        w = weight.detach().to(dtype)
        b = None if bias is None else bias.detach().to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = F.conv2d(sign.to(dtype), w, b, stride, padding, dilation, groups)
        ctx.save_for_backward(code, w)
        ctx.conv = (list(stride), list(padding), list(dilation), groups)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        code, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out.to(w.dtype),
            code.sign().to(w.dtype),
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
            grad_x = grad_x.mul_(code.abs().sub_(1).to(grad_x.dtype)).to(x_dtype)
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
