"""The fused sign+conv (``bnn_lightning.fused``) equals the generic path on each device, in bf16.

Under bf16 autocast the fused function and the generic path (quantizer module, then
``F.conv2d``) hand the convolution the same bf16 operands, so the forward pass is exact on the
CPU. On CUDA cuDNN may pick another algorithm for each call (the two paths call it from
different places), and a weight gradient summed in another order rounds to another bf16 value:
there the comparison allows bf16 rounding, which is far below what a wrong STE mask or a wrong
sign would change (whole gradient entries zeroed or flipped).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bnn_lightning.layers import BinaryConv2d
from bnn_lightning.quantizers import SteSign


class _GenericSteSign(SteSign):
    """Same maths as SteSign, but not SteSign's exact type, so the layer takes the generic path."""


@pytest.fixture
def deterministic_cudnn() -> Iterator[None]:
    """cuDNN's deterministic algorithms (no atomics in the weight gradient), restored after."""
    saved = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = saved


def _pair(device: torch.device, **conv: object) -> tuple[BinaryConv2d, BinaryConv2d]:
    fused = BinaryConv2d(32, 64, 3, **conv).to(device)  # type: ignore[arg-type]
    generic = BinaryConv2d(32, 64, 3, **conv).to(device)  # type: ignore[arg-type]
    generic.load_state_dict(fused.state_dict())
    generic.input_quantizer = _GenericSteSign()
    return fused, generic


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, exact: bool) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if exact:
        assert torch.equal(actual, expected)
    else:  # bf16 rounding of sums taken in another order, relative to the tensor's scale
        scale = float(expected.abs().max())
        torch.testing.assert_close(actual, expected, rtol=1.6e-2, atol=1.6e-2 * scale)


@pytest.mark.usefixtures("deterministic_cudnn")
@pytest.mark.parametrize(
    ("stride", "groups", "pad_value", "bias"), [(1, 1, 1.0, False), (2, 2, 0.0, True)]
)
def test_fused_sign_conv_equals_the_generic_path_under_bf16_autocast(
    device: torch.device, stride: int, groups: int, pad_value: float, bias: bool
) -> None:
    fused, generic = _pair(
        device, stride=stride, padding=1, groups=groups, bias=bias, pad_value=pad_value
    )
    x = torch.randn(16, 32, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    x[0, :, 0] = 0.0  # sign(0) = +1
    x[1, :, 1] = 1.0  # on the clip boundary: the gradient passes
    x[2, :, 2] = 1.5  # outside the clip: the gradient is cut
    assert fused._fused(fused.input_quantizer, x)
    assert not generic._fused(generic.input_quantizer, x)
    outs, grads = [], []
    for layer in (fused, generic):
        xi = x.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = layer(xi)
        out.float().square().sum().backward()
        outs.append(out)
        grads.append((xi.grad, layer.weight.grad, layer.bias.grad if bias else None))
    exact = device.type == "cpu"
    assert outs[0].dtype == torch.bfloat16 and outs[0].device.type == device.type
    _assert_same(outs[0], outs[1], exact)
    for a, b in zip(grads[0], grads[1], strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            _assert_same(a, b, exact)
    grad_x = grads[0][0]
    assert grad_x is not None
    assert torch.all(grad_x[2, :, 2] == 0) and torch.any(grad_x[1, :, 1] != 0)
