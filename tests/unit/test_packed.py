"""Packed XNOR-popcount convolution: popcount, parity with the float conv, model conversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnn_lightning.bits import pack_bits, popcount64
from bnn_lightning.layers import BinaryConv2d, get_modes
from bnn_lightning.models import BinaryResNet
from bnn_lightning.packed import (
    PackedBinaryConv2d,
    binary_weight_parts,
    convert_to_packed,
    xnor_conv2d,
)


def _signs(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def test_popcount64_matches_python_bit_count() -> None:
    edges = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 0x5555555555555555, -0x5555555555555556])
    words = torch.cat([edges, torch.randint(-(2**63), 2**63 - 1, (2000,))])
    expected = torch.tensor([bin(w & (2**64 - 1)).count("1") for w in words.tolist()])
    assert torch.equal(popcount64(words), expected)


# (in, out, kernel, stride, padding, dilation, groups, pad_value): odd channel counts, word
# boundaries (63, 64, 65 channels), padding of every kind, strides, dilation, groups, 1x1.
CASES = [
    (3, 5, (3, 3), 1, (1, 1), 1, 1, 0.0),
    (65, 7, (3, 3), 2, (1, 1), 1, 1, 0.0),
    (64, 8, (3, 3), 1, (1, 1), 1, 1, -1.0),
    (63, 6, (3, 3), 2, (1, 1), 1, 3, 1.0),
    (12, 8, (3, 3), 1, (2, 2), 2, 4, 0.0),
    (130, 66, (1, 1), 1, (0, 0), 1, 2, 0.0),
    (16, 16, (3, 3), 2, (1, 1), 1, 16, 0.0),
    (9, 4, (3, 1), 1, (2, 0), 1, 1, 0.0),
]


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "pad", "dil", "groups", "value"), CASES
)
def test_packed_conv_equals_float_conv_on_signs(
    cin: int,
    cout: int,
    kernel: tuple[int, int],
    stride: int,
    pad: tuple[int, int],
    dil: int,
    groups: int,
    value: float,
) -> None:
    x = torch.randn(2, cin, 11, 9)
    x[0, 0, 0, 0] = 0.0  # sign(0) = +1
    w = _signs(torch.randn(cout, cin // groups, *kernel))
    # The definition: a float conv on +-1 inputs whose padding ring holds pad_value (0 or +-1).
    ring = F.pad(_signs(x), (pad[1], pad[1], pad[0], pad[0]), value=value)
    expected = F.conv2d(ring, w, None, stride, 0, dil, groups)
    packed = PackedBinaryConv2d(w, None, None, stride, pad, dil, groups, value)
    assert torch.equal(packed(x), expected)


def test_packed_conv_applies_scale_and_bias() -> None:
    conv = BinaryConv2d(10, 6, 3, padding=1, bias=True)
    x = torch.randn(2, 10, 7, 7)
    packed = PackedBinaryConv2d.from_binary_conv(conv)
    torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-6)
    signs, scale = binary_weight_parts(conv)
    assert torch.equal(signs * scale.view(-1, 1, 1, 1), conv.quantized_weight())


def test_eager_chunking_does_not_change_the_result() -> None:
    x = torch.randn(3, 20, 8, 8)
    bits, _ = pack_bits(_signs(torch.randn(12, 20, 3, 3)), torch.int64, dim=1)
    bits = bits.reshape(1, 12, -1)
    whole = xnor_conv2d(x, bits, (3, 3), padding=(1, 1))
    chunked = xnor_conv2d(x, bits, (3, 3), padding=(1, 1), max_elements=100)
    assert torch.equal(whole, chunked)


def test_only_fully_binary_convs_can_be_packed() -> None:
    with pytest.raises(ValueError, match="not binary"):
        PackedBinaryConv2d.from_binary_conv(BinaryConv2d(4, 4, 3, input_quantizer=None))
    with pytest.raises(ValueError, match="not a binary one"):
        PackedBinaryConv2d.from_binary_conv(BinaryConv2d(4, 4, 3, weight_quantizer=None))
    with pytest.raises(ValueError, match="pad_value"):
        PackedBinaryConv2d(torch.ones(2, 2, 3, 3), pad_value=0.5)


def test_convert_to_packed_keeps_the_logits_of_a_binary_resnet() -> None:
    # Unit-scale weights make every binary conv an exact integer in both paths.
    model = BinaryResNet("resnet18", 10, stem="cifar", width=8, weight_quantizer="ste_sign")
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    assert get_modes(model) == {"binary": 16}
    assert convert_to_packed(model) == 16
    assert sum(isinstance(m, PackedBinaryConv2d) for m in model.modules()) == 16
    assert not get_modes(model)
    assert torch.equal(model(x), expected)


def test_compiled_packed_conv_matches_eager() -> None:
    w = _signs(torch.randn(8, 70, 3, 3))
    x = torch.randn(1, 70, 6, 6)
    eager = PackedBinaryConv2d(w, padding=1)
    compiled = PackedBinaryConv2d(w, padding=1, use_compile=True)
    assert torch.equal(compiled(x), eager(x))
