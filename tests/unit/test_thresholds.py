"""ReActNet's RSign and RPReLU against their formulas, in binary layers, blocks and the network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn_lightning import RPReLU, RSign
from bnn_lightning.export import export_packed, load_packed, read_manifest
from bnn_lightning.layers import BinaryConv2d, get_modes, set_mode, set_quantizers
from bnn_lightning.models import BasicBlock, BinaryResNet, ReActBlock, create_model
from bnn_lightning.packed import convert_to_packed
from bnn_lightning.quantizers import ApproxSign, Clamp, SteSign
from bnn_lightning.summary import summary

# Pseudo-derivatives q'(u) of the STEs RSign wraps.
STES: dict[str, Callable[[Tensor], Tensor]] = {
    "ste_sign": lambda u: (u.abs() <= 1.0).float(),
    "approx_sign": lambda u: (2.0 - 2.0 * u.abs()).clamp_min(0.0),
}


def _sign(t: Tensor) -> Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def _channel(t: Tensor, x: Tensor) -> Tensor:
    return t.view(1, -1, *[1] * (x.dim() - 2))


def _input_with_ties(alpha: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Random input whose first sample equals the thresholds exactly."""
    x = torch.randn(shape)
    x[0] = _channel(alpha, x)[0]
    return x


@pytest.mark.parametrize("name", list(STES))
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (7, 4)])
def test_rsign_values_and_gradients_follow_the_formula(name: str, shape: tuple[int, ...]) -> None:
    rsign = RSign(4, name)
    with torch.no_grad():
        rsign.alpha.copy_(torch.tensor([0.3, -0.7, 0.0, 1.2]))
    x = _input_with_ties(rsign.alpha.detach(), shape).requires_grad_(True)
    g = torch.randn(shape)
    y = rsign(x)
    u = x.detach() - _channel(rsign.alpha.detach(), x)
    assert torch.equal(y.detach(), _sign(u))
    assert (y.detach()[0] == 1.0).all()  # sign(0) = +1 where x == alpha
    (y * g).sum().backward()
    grad_x = g * STES[name](u)
    dims = [d for d in range(len(shape)) if d != 1]
    torch.testing.assert_close(x.grad, grad_x)
    torch.testing.assert_close(rsign.alpha.grad, -grad_x.sum(dims))


def test_rsign_is_a_binary_quantizer_and_without_a_sign_only_shifts() -> None:
    rsign = RSign(3, "ste_sign")
    assert rsign.precision == 1 and rsign.unit_output
    shift = RSign(3, None)
    with torch.no_grad():
        shift.alpha.copy_(torch.tensor([1.0, -2.0, 0.5]))
    x = torch.randn(2, 3, 4, 4)
    assert shift.precision == 32 and not shift.unit_output
    assert torch.equal(shift(x), x - torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))


@pytest.mark.parametrize("channels", [0, -3, 2.5, True])
def test_bad_channel_counts_are_rejected(channels: object) -> None:
    for cls in (RSign, RPReLU):
        with pytest.raises(ValueError, match="positive number of channels") as err:
            cls(channels)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("with_shortcut", [False, True])
def test_rprelu_values_and_gradients_follow_the_formula(with_shortcut: bool) -> None:
    """``rprelu(x)``, and ``rprelu(x / 2, x / 2)`` (the residual form, its fast backward)."""
    rprelu = RPReLU(3)
    with torch.no_grad():
        rprelu.weight.copy_(torch.tensor([0.25, -0.4, 1.5]))
        rprelu.gamma.copy_(torch.tensor([0.5, -1.0, 0.0]))
        rprelu.zeta.copy_(torch.tensor([-0.2, 0.7, 2.0]))
    x = torch.randn(4, 3, 5, 5)
    x[:, :, 0, 0] = rprelu.gamma.detach().view(1, 3)  # x == gamma: PReLU(0) = 0
    x.requires_grad_(True)
    beta, gamma, zeta = (
        _channel(p.detach(), x) for p in (rprelu.weight, rprelu.gamma, rprelu.zeta)
    )
    u = x.detach() - gamma
    expected = torch.where(u >= 0, u, beta * u) + zeta
    y = rprelu(x / 2, x / 2) if with_shortcut else rprelu(x)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    slope = torch.where(u > 0, 1.0, beta.expand_as(u))  # PReLU's derivative at 0 is its slope
    torch.testing.assert_close(x.grad, g * slope)
    torch.testing.assert_close(rprelu.gamma.grad, -(g * slope).sum((0, 2, 3)))
    torch.testing.assert_close(rprelu.zeta.grad, g.sum((0, 2, 3)))
    torch.testing.assert_close(rprelu.weight.grad, (g * torch.where(u > 0, 0.0, u)).sum((0, 2, 3)))


def test_fresh_rprelu_is_a_fresh_prelu() -> None:
    x = torch.randn(2, 5, 3, 3)
    assert torch.equal(RPReLU(5)(x), nn.PReLU(5)(x))


def _conv_pair(quantizer: str) -> tuple[BinaryConv2d, Callable[[Tensor], Tensor]]:
    """A binary conv with an RSign input, and the same computation written out by hand."""
    conv = BinaryConv2d(4, 6, 3, padding=1)
    conv.input_quantizer = RSign(4, quantizer)
    with torch.no_grad():
        conv.input_quantizer.alpha.copy_(torch.tensor([0.2, -0.5, 0.0, 0.9]))

    def by_hand(x: Tensor) -> Tensor:
        return F.conv2d(conv.input_quantizer(x), conv.quantized_weight(), padding=1)

    return conv, by_hand


@pytest.mark.parametrize("quantizer", ["ste_sign", "approx_sign"])
@pytest.mark.parametrize("autocast", [False, True])
def test_binary_conv_with_rsign_equals_the_formula(quantizer: str, autocast: bool) -> None:
    """The fused sign+conv path (ste_sign) and the generic one give RSign's values and grads."""
    conv, by_hand = _conv_pair(quantizer)
    x = _input_with_ties(conv.input_quantizer.alpha.detach(), (2, 4, 6, 6))
    results = []
    for fn in (conv, by_hand):
        conv.zero_grad()
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = fn(xi)
        y.float().square().sum().backward()
        alpha = conv.input_quantizer.alpha.grad
        results.append((y.detach(), xi.grad, alpha.clone(), conv.weight.grad.clone()))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)
    assert results[0][2].abs().sum() > 0


def test_react_block_computes_reactnet_formula() -> None:
    torch.manual_seed(1)
    block = ReActBlock(8, 8).eval()
    with torch.no_grad():
        block.conv.input_quantizer.alpha.normal_(0.0, 0.3)
        block.bn.running_mean.normal_(0.0, 0.2)
        block.prelu.gamma.normal_(0.0, 0.3)
        block.prelu.zeta.normal_(0.0, 0.3)
    x = torch.randn(2, 8, 5, 5)
    alpha = _channel(block.conv.input_quantizer.alpha.detach(), x)
    conv = F.conv2d(_sign(x - alpha), block.conv.quantized_weight().detach(), padding=1)
    expected = block.prelu(block.bn(conv) + x)
    torch.testing.assert_close(block(x), expected)
    assert block.conv.input_precision == 1 and block.conv.weight_precision == 1


def _reactnet(**kwargs: object) -> BinaryResNet:
    return create_model("resnet18_cifar", width=8, num_classes=10, block="reactnet", **kwargs)


def _learned(model: nn.Module) -> nn.Module:
    """Non-zero thresholds and shifts, as after training."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RSign):
                m.alpha.normal_(0.0, 0.3)
            if isinstance(m, RPReLU):
                m.gamma.normal_(0.0, 0.3)
                m.zeta.normal_(0.0, 0.3)
    return model


def test_every_binary_block_of_a_reactnet_has_rsign_and_rprelu() -> None:
    model = _reactnet()
    blocks = [m for m in model.modules() if isinstance(m, ReActBlock)]
    assert len(blocks) == 16 and not any(isinstance(m, BasicBlock) for m in model.modules())
    assert all(isinstance(b.conv.input_quantizer, RSign) for b in blocks)
    assert all(type(b.prelu) is RPReLU for b in blocks)
    assert get_modes(model) == {"binary": 16}
    assert isinstance(create_model("resnet18_cifar", width=8).stages[0][0], BasicBlock)
    out = _learned(model)(torch.randn(2, 3, 32, 32))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient for {missing}"


def test_block_choice_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="Unknown block 'react'"):
        create_model("resnet18", block="react")
    with pytest.raises(ValueError, match=r"block='reactnet' needs a basic-block arch.*resnet50"):
        create_model("resnet50", block="reactnet")


def test_summary_counts_the_thresholds_as_real_valued_parameters() -> None:
    model = _reactnet()
    counted = summary(model, (3, 32, 32))
    assert counted.params == sum(p.numel() for p in model.parameters())
    extra = sum(
        m.alpha.numel() if isinstance(m, RSign) else m.gamma.numel() + m.zeta.numel()
        for m in model.modules()
        if isinstance(m, (RSign, RPReLU))
    )
    alphas = 4 * 8 + (8 + 3 * 16) + (16 + 3 * 32) + (32 + 3 * 64)  # one per block input channel
    assert extra == alphas + 2 * 4 * (8 + 16 + 32 + 64)  # gamma and zeta per output channel
    baseline = summary(create_model("resnet18_cifar", width=8, num_classes=10), (3, 32, 32))
    wider_bn = 2 * (8 + 16 + 32)  # the BN after a widening conv has its output's width
    assert counted.params_float - baseline.params_float == extra + wider_bn
    assert counted.bops == baseline.bops and counted.params_binary == baseline.params_binary


def test_mode_switches_keep_the_learned_thresholds() -> None:
    model = _learned(_reactnet(mode="binary_activations"))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("alpha")}
    set_mode(model, "binary", activation="approx_sign")
    assert get_modes(model) == {"binary": 16}
    set_quantizers(model, input_quantizer="clamp")
    rsigns = [m for m in model.modules() if isinstance(m, RSign)]
    assert len(rsigns) == 16 and all(isinstance(m.quantizer, Clamp) for m in rsigns)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in before.items())
    set_mode(model, "binary")
    assert all(isinstance(m.quantizer, SteSign) for m in rsigns)
    assert isinstance(RSign(2, "approx_sign").quantizer, ApproxSign)


@pytest.mark.parametrize("activation", ["ste_sign", "approx_sign"])
def test_packed_export_keeps_the_thresholds(tmp_path: Path, activation: str) -> None:
    model = _trained(_reactnet(activation_quantizer=activation))
    path = export_packed(model, tmp_path / "reactnet.bnn")
    layer = read_manifest(path)["layers"]["stages.1.0.conv"]
    assert layer["input_quantizer"]["class_path"] == "bnn_lightning.thresholds.RSign"
    assert layer["input_quantizer"]["init_args"]["quantizer"]["name"] == activation
    loaded = load_packed(path)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    for name, p in model.named_parameters():
        if name.endswith(("alpha", "gamma", "zeta")):
            assert torch.equal(loaded.get_parameter(name), p), name


def test_xnor_popcount_convs_subtract_the_thresholds() -> None:
    # Unit-scale weights make every binary conv an exact integer in both paths.
    model = _trained(_reactnet(weight_quantizer="ste_sign"))
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    assert convert_to_packed(model) == 16
    assert torch.equal(model(x), expected)


def _trained(model: nn.Module) -> nn.Module:
    """Learned thresholds, BatchNorm statistics and slopes; eval mode."""
    _learned(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_(0.0, 0.2)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.0, 0.5)
    return model.eval()
