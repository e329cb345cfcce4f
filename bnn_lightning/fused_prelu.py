"""``prelu(x + shortcut)``, the end of every binary ResNet block, with a fast exact backward.

On CPU, ATen's PReLU backward (``_prelu_kernel_backward``) writes the input gradient and a
full-size slope gradient in one scalar loop; in bf16 it takes about 80x the time of the PReLU
forward and was the largest elementwise cost of a training step. :class:`AddPReLU` computes the
same values as ``nn.PReLU()(x + shortcut)`` under autocast (the sum in the inputs' dtype, then
autocast's cast of the sum and the slope) and the same gradients:

* ``dL/dz = g`` where ``z > 0``, else ``slope * g``;
* ``dL/dslope = sum(z > 0 ? 0 : z * g)`` over every dimension but the channel, reduced with the
  same ``sum_to_size`` autograd applies to ATen's full-size slope gradient.

On a CPU with AVX-512 the backward is one pass (:func:`bnn_lightning.fused_cpu.prelu_backward`,
bf16 and fp32, NCHW or channels_last): it reads ``z`` and ``g`` and writes the input gradient and
the full-size slope gradient, bit for bit ATen's ``_prelu_kernel_backward``, 1.5-2x faster than the
ATen ops it replaces in fp32 and up to 1.2x in bf16, where both are memory-bound
(``benchmarks/bench_kernels.py``). Elsewhere the backward is vectorised ATen ops (a ``lerp``
between ``g`` and ``slope * g``, exact for a 0/1 weight and finite values). The values are
identical to the generic path (tested bit for bit, fp32 and bf16 autocast, channels_last), for
finite gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn_lightning import fused_cpu

__all__ = ["AddPReLU", "add_prelu", "prelu_grads"]


def _slope_view(weight: Tensor, z: Tensor) -> Tensor:
    """The slope shaped to broadcast over ``z`` as ``aten::prelu`` reshapes it."""
    if weight.numel() == 1 or z.dim() < 2:
        return weight
    return weight.reshape([1, -1] + [1] * (z.dim() - 2))


def prelu_grads(
    z: Tensor, grad: Tensor, slope: Tensor, weight_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """``dL/dz`` and, if ``weight_grad``, the full-size slope gradient (before its sum) of
    ``prelu(z, slope)`` for ``grad`` in ``z``'s dtype and layout; ``slope`` shaped to broadcast
    over ``z``. The one-pass kernel where it applies, else ATen's ops (same bits)."""
    if fused_cpu.prelu_usable(z, grad):
        return fused_cpu.prelu_backward(z, grad, slope, weight_grad)
    positive = torch.gt(z, 0, out=torch.empty_like(z))
    grad_z = torch.lerp(grad * slope, grad, positive)
    return grad_z, z.clamp(max=0).mul_(grad) if weight_grad else None


class _AddPReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, shortcut: Tensor, weight: Tensor) -> Tensor:
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)  # prelu is on its lower-precision list
        slope = weight.to(torch.get_autocast_dtype(device)) if autocast else weight
        z = x + shortcut
        z = z.to(slope.dtype) if autocast else z
        with torch.autocast(device, enabled=False):
            out = F.prelu(z, slope)
        ctx.save_for_backward(z, _slope_view(slope, z))
        ctx.weight_meta = (weight.dtype, weight.shape)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        z, slope = ctx.saved_tensors
        if grad.dtype != z.dtype or grad.stride() != z.stride():
            # z's dtype and memory format (e.g. channels_last where the head's pooling sends a
            # contiguous gradient): the ops below run in one layout, and so do the grads they send
            grad = torch.empty_like(z).copy_(grad)
        need_x, need_shortcut, need_w = ctx.needs_input_grad
        grad_z, full = prelu_grads(z, grad, slope, need_w)
        grad_w = None
        if full is not None:
            dtype, shape = ctx.weight_meta
            grad_w = full.sum_to_size(slope.shape).reshape(shape).to(dtype)
        return (
            grad_z if need_x else None,
            grad_z if need_shortcut else None,
            grad_w,
        )


def add_prelu(x: Tensor, shortcut: Tensor, weight: Tensor) -> Tensor:
    """``F.prelu(x + shortcut, weight)`` with the fast backward (see the module docstring)."""
    return _AddPReLUFn.apply(x, shortcut, weight)


class AddPReLU(nn.PReLU):
    """``nn.PReLU`` that also takes the residual: ``prelu(x + shortcut)`` in one call.

    Same parameters, state-dict keys and forward values as ``nn.PReLU()(x + shortcut)``; while
    autograd records (training) on CPU or CUDA, the backward is :func:`add_prelu`'s. Elsewhere
    (no grad, ``torch.compile`` tracing, the meta device) it is the plain sum and PReLU.
    """

    def forward(self, x: Tensor, shortcut: Tensor | None = None) -> Tensor:
        if shortcut is None:
            return super().forward(x)
        if (
            torch.is_grad_enabled()
            and x.device.type in ("cpu", "cuda")
            and not torch.compiler.is_compiling()
        ):
            return add_prelu(x, shortcut, self.weight)
        return F.prelu(x + shortcut, self.weight)
