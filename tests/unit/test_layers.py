"""Binary layers equal the plain float op run on quantized input and weights (larq's identity)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnn_lightning import layers as L
from bnn_lightning.quantizers import MagnitudeAwareSign, SteSign, binary_sign


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def _reference_weight(w: torch.Tensor, binary: bool) -> torch.Tensor:
    if not binary:
        return w
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True) * _sign(w)


@pytest.mark.parametrize("mode", L.MODES)
@pytest.mark.parametrize("groups", [1, 2])
def test_binary_conv_equals_float_conv_on_quantized_operands(mode: str, groups: int) -> None:
    conv = L.BinaryConv2d(4, 6, 3, stride=2, padding=1, groups=groups)
    L.set_mode(conv, mode)  # type: ignore[arg-type]
    x = torch.randn(2, 4, 7, 7)
    x[0, 0, :2] = 0.0  # exact zeros must binarize to +1
    binary_in = mode in ("binary_activations", "binary")
    binary_w = mode in ("binary_weights", "binary")
    expected = F.conv2d(
        _sign(x) if binary_in else x,
        _reference_weight(conv.weight.detach(), binary_w),
        stride=2,
        padding=1,
        groups=groups,
    )
    assert torch.equal(conv(x).detach(), expected)
    assert L.layer_mode(conv) == mode


@pytest.mark.parametrize("mode", L.MODES)
def test_latent_weights_and_inputs_receive_gradients(mode: str) -> None:
    conv = L.BinaryConv2d(3, 5, 3, padding=1)
    L.set_mode(conv, mode)  # type: ignore[arg-type]
    x = (0.5 * torch.randn(2, 3, 6, 6)).requires_grad_(True)
    conv(x).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", L.MODES)
def test_binary_linear_equals_float_linear_on_quantized_operands(mode: str) -> None:
    linear = L.BinaryLinear(5, 3)
    L.set_mode(linear, mode)  # type: ignore[arg-type]
    x = torch.randn(4, 5)
    binary_in = mode in ("binary_activations", "binary")
    binary_w = mode in ("binary_weights", "binary")
    expected = F.linear(
        _sign(x) if binary_in else x,
        _reference_weight(linear.weight.detach(), binary_w),
        linear.bias.detach(),
    )
    torch.testing.assert_close(linear(x).detach(), expected)


@pytest.mark.parametrize("pad_value", [-1.0, 1.0])
def test_pad_value_pads_with_a_binary_value(pad_value: float) -> None:
    conv = L.BinaryConv2d(2, 3, 3, padding=1, pad_value=pad_value)
    x = torch.randn(1, 2, 5, 5)
    padded = F.pad(binary_sign(x), (1, 1, 1, 1), value=pad_value)
    expected = F.conv2d(padded, _reference_weight(conv.weight.detach(), True))
    assert torch.equal(conv(x).detach(), expected)
    assert "pad_value" in repr(conv)


def test_set_mode_switches_every_layer_and_keeps_the_state_dict() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), L.BinaryConv2d(4, 4, 3), nn.Flatten(), L.BinaryLinear(4, 2)
    )
    keys = list(model.state_dict())
    assert L.get_modes(model) == Counter(binary=2)
    assert L.set_mode(model, "binary_activations") == 2
    assert L.get_modes(model) == Counter(binary_activations=2)
    assert isinstance(model[1].input_quantizer, SteSign) and model[1].weight_quantizer is None
    L.set_mode(model, "binary", activation="approx_sign")
    assert isinstance(model[1].weight_quantizer, MagnitudeAwareSign)
    assert model[1].input_quantizer is not model[3].input_quantizer  # one instance per layer
    L.set_quantizers(model, input_quantizer=None)
    assert L.get_modes(model) == Counter(binary_weights=2)
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="Unknown mode 'half'"):
        L.set_mode(model, "half")  # type: ignore[arg-type]


def test_string_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="integer padding"):
        L.BinaryConv2d(2, 2, 3, padding="same")  # type: ignore[arg-type]


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total


@pytest.mark.parametrize("autocast", [False, True])
def test_binary_activations_are_saved_compactly_with_exact_gradients(autocast: bool) -> None:
    conv = L.BinaryConv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        conv(x).float().square().sum().backward()
        binary_bytes = _saved_bytes(conv, x)
        L.set_mode(conv, "binary_weights")
        float_bytes = _saved_bytes(conv, x)
    assert binary_bytes < float_bytes

    # Reference: plain autograd on sign(x) with the clipped STE written out.
    w = conv.weight.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    sign_ste = _sign(xr).detach() + (xr - xr.detach()) * (xr.abs() <= 1)
    wq = w.abs().mean(dim=(1, 2, 3), keepdim=True).detach() * (_sign(w).detach() + w - w.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        F.conv2d(sign_ste, wq, padding=1).float().square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(conv.weight.grad, w.grad * (w.abs() <= 1))
