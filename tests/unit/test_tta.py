"""Test-time augmentation: each view against its definition, the averages, the module's use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier
from bnn_lightning.tta import shift, tta_logits


def _reflect(i: int, n: int) -> int:
    """Index ``i`` of a reflect-padded axis of length ``n`` (no edge repeat: -1 -> 1)."""
    return -i if i < 0 else 2 * (n - 1) - i if i >= n else i


@pytest.mark.parametrize("dy,dx", [(1, 1), (-1, -1), (2, -1), (0, 1)])
def test_shift_moves_every_pixel_and_reflects_the_border(dy, dx):
    images = torch.randn(2, 3, 5, 6)
    out = shift(images, dy, dx)
    assert out.shape == images.shape
    for i in range(5):
        for j in range(6):  # output pixel (i, j) comes from input (i - dy, j - dx)
            src = images[..., _reflect(i - dy, 5), _reflect(j - dx, 6)]
            assert torch.equal(out[..., i, j], src)


class _Pixels(nn.Module):
    """A linear classifier of the raw pixels: no symmetry, so every view gives other logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def test_views_and_weights_follow_the_definition():
    torch.manual_seed(0)
    net, x = _Pixels(), torch.randn(3, 3, 4, 4)
    assert torch.equal(tta_logits(net, x, "none"), net(x))
    mirror = x.flip(-1)
    assert mirror[..., 0, 0].equal(x[..., 0, 3])
    flip = (net(x) + net(mirror)) / 2
    torch.testing.assert_close(tta_logits(net, x, "flip"), flip)
    assert not torch.allclose(flip, net(x))
    shifted = [net(shift(v, d, d)) for v in (x, mirror) for d in (1, -1)]
    net.calls = 0
    six = tta_logits(net, x, "flip_shift")
    assert net.calls == 6
    torch.testing.assert_close(six, 0.25 * net(x) + 0.25 * net(mirror) + sum(shifted) / 8)


def test_unknown_mode_is_one_clear_error():
    with pytest.raises(ValueError, match=r"tta='crops' .* use one of \('none', 'flip'"):
        BNNClassifier(_Pixels(), num_classes=5, tta="crops")  # type: ignore[arg-type]


def test_module_uses_the_views_in_evaluation_only():
    torch.manual_seed(0)
    net = BinaryResNet(arch="resnet10", stem="cifar", width=8, num_classes=4)
    plain, model = BNNClassifier(net, tta="none"), BNNClassifier(net, tta="flip")
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        logits, _ = model._forward(x, train=False)
        torch.testing.assert_close(logits, (net(x) + net(x.flip(-1))) / 2)
        probs = model.predict_step((x, torch.zeros(2)), 0)
        torch.testing.assert_close(probs, logits.softmax(dim=1))
        train_logits, _ = model._forward(x, train=True)
        torch.testing.assert_close(train_logits, plain._forward(x, train=True)[0])
        assert not torch.allclose(train_logits, logits)
    assert "tta" not in model.hparams  # the evaluating command chooses (see _save_hparams)
