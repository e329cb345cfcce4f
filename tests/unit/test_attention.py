"""Channel attention gates: shapes, range, math against the papers' definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnn_lightning.attention import ATTENTION, CBAMGate, ECAGate, SEGate, get_attention

GATES = [name for name in ATTENTION if name != "none"]


@pytest.mark.parametrize("name", GATES)
@pytest.mark.parametrize(("cin", "cout", "stride", "size"), [(16, 16, 1, 8), (16, 32, 2, 7)])
def test_gate_broadcasts_against_conv_output(
    name: str, cin: int, cout: int, stride: int, size: int
) -> None:
    x = torch.randn(3, cin, size, size)
    conv_out = F.conv2d(x, torch.randn(cout, cin, 3, 3), stride=stride, padding=1)
    gate = get_attention(name, cin, cout, stride)
    assert gate is not None
    g = gate(x)
    assert g.shape[:2] == (3, cout)
    assert (conv_out * g).shape == conv_out.shape
    assert g.min() > 0 and g.max() < 1
    g.sum().backward()
    assert all(p.grad is not None for p in gate.parameters())


def test_se_matches_definition() -> None:
    gate = SEGate(32, 48, reduction=4)
    x = torch.randn(2, 32, 5, 5)
    squeeze = x.mean(dim=(2, 3))
    hidden = torch.relu(squeeze @ gate.fc1.weight.flatten(1).T + gate.fc1.bias)
    expected = torch.sigmoid(hidden @ gate.fc2.weight.flatten(1).T + gate.fc2.bias)
    assert gate.fc1.out_channels == 8
    torch.testing.assert_close(gate(x), expected[:, :, None, None])


@pytest.mark.parametrize(("channels", "k"), [(8, 3), (64, 3), (256, 5), (512, 5)])
def test_eca_kernel_size_follows_paper(channels: int, k: int) -> None:
    # k = |(log2(C) + 1) / 2| rounded to the odd number at or above it.
    assert ECAGate(channels, channels).conv.kernel_size == (k,)


def test_eca_matches_definition() -> None:
    gate = ECAGate(16, 16)
    x = torch.randn(2, 16, 4, 4)
    w = gate.conv.weight.flatten()
    y = F.pad(x.mean(dim=(2, 3)), (1, 1))
    expected = torch.sigmoid(sum(w[i] * y[:, i : i + 16] for i in range(3)))
    torch.testing.assert_close(gate(x), expected[:, :, None, None])


def test_eca_resamples_channels_when_widths_differ() -> None:
    gate = ECAGate(8, 16)
    x = torch.randn(1, 8, 4, 4)
    logits = gate.conv(x.mean(dim=(2, 3)).unsqueeze(1))
    g = gate(x).flatten()
    # align_corners linear resampling keeps the end points.
    torch.testing.assert_close(g[[0, -1]], torch.sigmoid(logits.flatten()[[0, -1]]))


def test_cbam_matches_definition_at_stride_two() -> None:
    gate = CBAMGate(16, 32, stride=2)
    x = torch.randn(2, 16, 7, 7)
    channel = gate.mlp(x.mean(dim=(2, 3), keepdim=True)) + gate.mlp(x.amax((2, 3), keepdim=True))
    descriptor = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    spatial = F.avg_pool2d(gate.spatial(descriptor), 2, 2, ceil_mode=True)
    assert spatial.shape[-2:] == (4, 4)  # = a 3x3 stride-2 padded conv's output on 7x7
    torch.testing.assert_close(gate(x), torch.sigmoid(channel) * torch.sigmoid(spatial))


def test_none_gives_no_gate_and_unknown_names_list_the_valid_ones() -> None:
    assert get_attention("none", 8, 8) is None
    with pytest.raises(
        ValueError, match=r"Unknown attention 'bam'; use one of cbam, eca, none, se\.$"
    ):
        get_attention("bam", 8, 8)


def test_gate_hidden_width_has_a_floor() -> None:
    assert SEGate(8, 8).fc1.out_channels == 4
    assert CBAMGate(128, 128).mlp[0].out_channels == 8
