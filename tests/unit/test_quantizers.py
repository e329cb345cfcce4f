"""Quantizers: forward values and each pseudo-gradient against its definition."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnn_lightning import quantizers as q

# A grid with exact zeros and the clip boundaries (+-1), and points on both sides of them.
GRID = torch.tensor([-3.0, -1.5, -1.0, -0.999, -0.5, -1e-7, 0.0, 1e-7, 0.5, 0.999, 1.0, 1.5, 3.0])


def _ref_ste(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    return (x.abs() <= clip).to(x.dtype)


def _ref_approx(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([2 - 2 * abs(v) if abs(v) <= 1 else 0.0 for v in x.tolist()])


def _ref_swish(x: torch.Tensor, beta: float = 5.0) -> torch.Tensor:
    # d/dx [2 sigmoid(bx) (1 + bx (1 - sigmoid(bx))) - 1], written with sigmoids.
    def grad(v: float) -> float:
        s = 1 / (1 + math.exp(-beta * v))
        return 2 * beta * s * (1 - s) * (2 + beta * v * (1 - 2 * s))

    return torch.tensor([grad(v) for v in x.tolist()])


BINARY = {
    "ste_sign": (q.SteSign, _ref_ste),
    "approx_sign": (q.ApproxSign, _ref_approx),
    "swish_sign": (q.SwishSign, _ref_swish),
}


def _grad(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor | None = None):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(torch.ones_like(y) if upstream is None else upstream)
    return y.detach(), x.grad


@pytest.mark.parametrize("name", [*BINARY, "magnitude_aware_sign"])
def test_binary_outputs_are_plus_minus_one_and_zero_maps_to_plus_one(name: str) -> None:
    quantizer = q.get_quantizer(name)
    assert quantizer is not None and quantizer.precision == 1
    x = torch.cat([GRID, torch.zeros(4)]).reshape(1, -1)
    y = quantizer(x)
    signs = torch.sign(y)
    assert set(signs.unique().tolist()) <= {-1.0, 1.0}
    assert torch.all(signs[x == 0] == 1.0)
    if name != "magnitude_aware_sign":
        assert set(y.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("name", list(BINARY))
def test_pseudo_gradient_matches_reference(name: str) -> None:
    cls, ref = BINARY[name]
    upstream = torch.linspace(0.5, 2.0, GRID.numel())
    _, grad = _grad(cls(), GRID, upstream)
    torch.testing.assert_close(grad, upstream * ref(GRID), rtol=1e-5, atol=1e-6)


def test_ste_clip_value_moves_the_boundary() -> None:
    _, grad = _grad(q.SteSign(clip=0.5), GRID)
    torch.testing.assert_close(grad, _ref_ste(GRID, 0.5))


def test_ste_does_not_modify_grad_output_in_place() -> None:
    x = GRID.clone().requires_grad_(True)
    upstream = torch.ones_like(GRID)
    q.SteSign()(x).backward(upstream)
    assert torch.all(upstream == 1.0)


def test_ste_saves_only_a_boolean_mask() -> None:
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        q.SteSign()(GRID.clone().requires_grad_(True))
    assert [t.dtype for t in saved] == [torch.bool]


def test_magnitude_aware_sign_scale_and_gradient() -> None:
    w = torch.tensor([[[[0.5, -1.5], [0.0, 2.0]]], [[[-0.2, 0.4], [0.6, -0.8]]]])  # (2,1,2,2)
    scale = torch.tensor([1.0, 0.5]).view(2, 1, 1, 1)  # mean |w| per output channel
    y, grad = _grad(q.MagnitudeAwareSign(), w)
    torch.testing.assert_close(y, scale * torch.where(w >= 0, 1.0, -1.0))
    # The scale is detached: the gradient is the clipped STE times the scale.
    torch.testing.assert_close(grad, scale * (w.abs() <= 1.0).float())


def test_leaky_clip_and_clamp_match_holmesshuan() -> None:
    y, grad = _grad(q.LeakyClip(), GRID)
    outside = GRID.abs() > 1
    expected = torch.where(outside, 0.1 * GRID + 0.9 * torch.sign(GRID), GRID)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(grad, torch.where(outside, 0.1, 1.0))
    y, grad = _grad(q.Clamp(), GRID)
    torch.testing.assert_close(y, GRID.clamp(-1, 1))
    assert q.LeakyClip.precision == q.Clamp.precision == q.ReLU.precision == 32


@pytest.mark.parametrize("name", [*BINARY, "magnitude_aware_sign", "leaky_clip", "clamp", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_is_preserved(name: str, dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 4, 4, dtype=dtype, requires_grad=True)
    y = q.get_quantizer(name)(x)  # type: ignore[misc]
    y.sum().backward()
    assert y.dtype == dtype and x.grad is not None and x.grad.dtype == dtype


def test_works_under_torch_compile() -> None:
    module = nn.Sequential(q.SteSign(), q.ApproxSign())
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    x = GRID.clone().requires_grad_(True)
    y = compiled(x)
    y.sum().backward()
    assert torch.equal(y, torch.where(GRID >= 0, 1.0, -1.0))
    # sign(sign(x)) has ApproxSign's gradient 2 - 2|+-1| = 0 on the outer stage.
    torch.testing.assert_close(x.grad, torch.zeros_like(GRID))


def test_get_quantizer_specs() -> None:
    assert q.get_quantizer(None) is None and q.get_quantizer("none") is None
    assert isinstance(q.get_quantizer("ste_sign"), q.SteSign)
    assert isinstance(q.get_quantizer("bnn_lightning.quantizers.ApproxSign"), q.ApproxSign)
    spec = {"class_path": "bnn_lightning.quantizers.SwishSign", "init_args": {"beta": 3.0}}
    swish = q.get_quantizer(spec)
    assert isinstance(swish, q.SwishSign) and swish.beta == 3.0
    instance = q.SteSign(clip=2.0)
    assert q.get_quantizer(instance) is instance
    assert q.quantizer_name(q.get_quantizer("approx_sign")) == "approx_sign"


@pytest.mark.parametrize("bad", ["sgn", "torch.nn.NoSuchThing", "math.pi", {"init_args": {}}, 3])
def test_unknown_quantizer_lists_the_valid_names(bad: object) -> None:
    with pytest.raises(ValueError, match=r"Unknown quantizer .*approx_sign, clamp"):
        q.get_quantizer(bad)  # type: ignore[arg-type]


def test_invalid_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="clip must be positive"):
        q.SteSign(clip=0.0)
    with pytest.raises(ValueError, match="beta must be positive"):
        q.SwishSign(beta=-1.0)
