"""AddPReLU, ``prelu(x + shortcut)`` with the fast backward, equals nn.PReLU on the sum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnn_lightning import fused_cpu
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


def _fused_and_plain(
    channels: int, x: torch.Tensor, shortcut: torch.Tensor, upstream: torch.Tensor, autocast: bool
) -> list[tuple[torch.Tensor | None, ...]]:
    """``(output, x.grad, shortcut.grad, slope.grad)`` of AddPReLU and of nn.PReLU on the sum,
    with the same slopes (negative ones too)."""
    fused, plain = AddPReLU(channels), nn.PReLU(channels)
    with torch.no_grad():
        fused.weight.copy_(torch.linspace(-0.5, 0.75, channels))
    plain.load_state_dict(fused.state_dict())
    results = []
    for module in (fused, plain):
        xi, si = (t.clone().requires_grad_(True) for t in (x, shortcut))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fused(xi, si) if module is fused else plain(xi + si)
        out.backward(upstream.to(out.dtype))
        results.append((out, xi.grad, si.grad, module.weight.grad))
    return results


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
    x, shortcut = (t.to(inputs) for t in _inputs(4, channels_last))
    results = _fused_and_plain(channels, x, shortcut, torch.randn_like(x), autocast)
    out = results[0][0]
    assert out is not None and out.is_contiguous(memory_format=torch.channels_last) == channels_last
    for a, b in zip(*results, strict=True):
        assert a is not None and b is not None
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


def _avx512_or_skip() -> None:
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    if fused_cpu.level() != fused_cpu.LEVELS.index("avx512"):
        pytest.skip("the one-pass PReLU backward needs AVX-512, which this CPU lacks")


def _edge_values(z: torch.Tensor, g: torch.Tensor) -> None:
    """Signed zeros, subnormals and large values where the vector loop starts."""
    edges = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 3.0e38, -3.0e38, 1e-39, -2.5])
    if z.numel() >= 2 + edges.numel():
        z.view(-1)[: edges.numel()] = edges.to(z.dtype)
        g.view(-1)[2 : 2 + edges.numel()] = edges.flip(0).to(g.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [
        ((3, 64, 8, 8), True),  # channels innermost: whole vectors of slopes
        ((2, 37, 3, 5), True),  # and a masked tail in every row
        ((2, 37, 5, 7), False),  # NCHW: one slope a run of 35 (a masked tail each)
        ((4, 512, 1, 1), False),
        ((2, 16, 32, 33), False),
        ((0, 8, 3, 3), False),  # an empty batch
    ],
)
@pytest.mark.parametrize("shared_slope", [False, True])
def test_one_pass_prelu_backward_is_atens_prelu_backward(
    dtype: torch.dtype, shape: tuple[int, ...], channels_last: bool, shared_slope: bool
) -> None:
    """Bit for bit ATen's ``_prelu_kernel_backward``: ``z > 0 ? g : slope * g`` and the
    full-size slope gradient ``z > 0 ? 0 : z * g``, in the input's layout."""
    _avx512_or_skip()
    torch.manual_seed(0)
    z, g = torch.randn(2, *shape).to(dtype).unbind(0)
    _edge_values(z, g)
    if channels_last:
        z, g = (t.contiguous(memory_format=torch.channels_last) for t in (z, g))
    channels = 1 if shared_slope else shape[1]
    weight = torch.linspace(-0.75, 1.5, channels).to(dtype)
    slope = weight if shared_slope else weight.reshape(1, -1, 1, 1)
    assert fused_cpu.prelu_usable(z, g)
    grad_z, full = fused_cpu.prelu_backward(z, g, slope, weight_grad=True)
    expected_z, expected_full = torch.ops.aten._prelu_kernel_backward(g, z, slope)
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    assert full is not None
    for got, expected in ((grad_z, expected_z), (full, expected_full)):
        assert got.dtype == dtype and got.stride() == z.stride()
        assert torch.equal(got.view(bits), expected.contiguous(memory_format=_format(z)).view(bits))
    assert fused_cpu.prelu_backward(z, g, slope, weight_grad=False)[1] is None


def _format(t: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if t.is_contiguous() else torch.channels_last


def test_one_pass_prelu_backward_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    _avx512_or_skip()
    z = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16)
    assert fused_cpu.prelu_usable(z, torch.randn_like(z))
    assert not fused_cpu.prelu_usable(z.half(), torch.randn_like(z.half()))  # fp16: ATen's ops
    assert not fused_cpu.prelu_usable(z, torch.randn_like(z).float())
    assert not fused_cpu.prelu_usable(z, torch.randn_like(z, memory_format=torch.channels_last))
    assert not fused_cpu.prelu_usable(z[:, ::2], torch.randn_like(z[:, ::2]))  # not dense
    monkeypatch.setattr(fused_cpu, "level", lambda: fused_cpu.LEVELS.index("avx2"))
    assert not fused_cpu.prelu_usable(z, torch.randn_like(z))


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("autocast", [False, True])
def test_add_prelu_on_a_block_sized_input(
    kernel: bool, autocast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 channels, channels_last, as in a binary ResNet block: the same values and gradients
    as nn.PReLU on the sum, with the one-pass backward and with ATen's ops."""
    if kernel:
        _avx512_or_skip()
    else:
        monkeypatch.setattr(fused_cpu, "prelu_usable", lambda z, grad: False)
    calls = []
    backward = fused_cpu.prelu_backward
    monkeypatch.setattr(
        fused_cpu, "prelu_backward", lambda *args: calls.append(1) or backward(*args)
    )
    torch.manual_seed(0)
    x, shortcut, upstream = (
        t.contiguous(memory_format=torch.channels_last) for t in torch.randn(3, 4, 64, 6, 6)
    )
    results = _fused_and_plain(64, x, shortcut, upstream, autocast)
    assert len(calls) == int(kernel)
    for a, b in zip(*results, strict=True):
        assert a is not None and b is not None
        assert a.dtype == b.dtype and torch.equal(a, b)
