"""AddPReLU, ``prelu(x + shortcut)`` with the fast backward, equals nn.PReLU on the sum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnn_lightning.fused_prelu import AddPReLU


def _inputs(channels: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, shortcut = torch.randn(2, 2, channels, 5, 6).unbind(0)
    x[0, :, 0] = -shortcut[0, :, 0]  # z == 0 exactly: the slope branch, no slope gradient
    x[1, :, 1] = 0.0
    shortcut[1, :, 1] = -0.0
    if channels_last:
        x, shortcut = (t.contiguous(memory_format=torch.channels_last) for t in (x, shortcut))
    return x, shortcut


@pytest.mark.parametrize(
    ("autocast", "inputs"),
    [(False, torch.float32), (True, torch.float32), (True, torch.bfloat16), (True, torch.float16)],
)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [4, 1])
def test_add_prelu_equals_prelu_of_the_sum(
    autocast: bool, inputs: torch.dtype, channels_last: bool, channels: int
) -> None:
    """fp32 inputs; under autocast also 2-byte ones, as a block's conv output and shortcut are."""
    fused, plain = AddPReLU(channels), nn.PReLU(channels)
    with torch.no_grad():
        fused.weight.copy_(torch.linspace(-0.5, 0.75, channels))
    plain.load_state_dict(fused.state_dict())
    x, shortcut = (t.to(inputs) for t in _inputs(4, channels_last))
    upstream = torch.randn_like(x)
    results = []
    for run in ("fused", "plain"):
        xi, si = (t.clone().requires_grad_(True) for t in (x, shortcut))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fused(xi, si) if run == "fused" else plain(xi + si)
        out.backward(upstream.to(out.dtype))
        module = fused if run == "fused" else plain
        results.append((out, xi.grad, si.grad, module.weight.grad))
    assert results[0][0].dtype == results[1][0].dtype
    assert results[0][0].is_contiguous(memory_format=torch.channels_last) == channels_last
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


def test_add_prelu_without_grad_or_shortcut_is_plain_prelu() -> None:
    prelu = AddPReLU(3)
    x, shortcut = torch.randn(2, 2, 3, 4, 4).unbind(0)
    assert torch.equal(prelu(x), nn.functional.prelu(x, prelu.weight))
    with torch.no_grad():
        assert torch.equal(prelu(x, shortcut), nn.functional.prelu(x + shortcut, prelu.weight))


def test_add_prelu_keeps_the_prelu_state_dict() -> None:
    assert set(AddPReLU(3).state_dict()) == set(nn.PReLU(3).state_dict())
    AddPReLU(3).load_state_dict(nn.PReLU(3).state_dict())


@pytest.mark.parametrize("autocast", [False, True])
def test_add_prelu_gradient_in_another_layout_comes_back_in_the_input_layout(
    autocast: bool,
) -> None:
    """A binary ResNet's head sends a contiguous gradient to a channels_last block (the pooling's
    backward): the gradients AddPReLU sends on are channels_last, as the block's convs expect,
    with the values of nn.PReLU on the sum."""
    fused, plain = AddPReLU(4), nn.PReLU(4)
    with torch.no_grad():
        fused.weight.copy_(torch.linspace(-0.5, 0.75, 4))
    plain.load_state_dict(fused.state_dict())
    x, shortcut = _inputs(4, channels_last=True)
    upstream = torch.randn(x.shape)  # contiguous
    grads = []
    for run in ("fused", "plain"):
        xi, si = (t.clone().requires_grad_(True) for t in (x, shortcut))
        seen: list[torch.Tensor] = []
        xh = xi * 1.0  # not a leaf: its gradient arrives as the op computed it
        xh.register_hook(seen.append)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fused(xh, si) if run == "fused" else plain(xh + si)
        out.backward(upstream.to(out.dtype))
        module = fused if run == "fused" else plain
        grads.append((seen[0], xi.grad, si.grad, module.weight.grad))
    assert grads[0][0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
