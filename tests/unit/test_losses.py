"""Each loss against its textbook formula on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnn_lightning.losses import (
    BNNLoss,
    CenterLoss,
    FeatureHooks,
    attention_map,
    attention_transfer_loss,
    hard_labels,
    kd_kl_loss,
    label_smoothing_ce,
    refinery_loss,
)

N, C = 6, 5


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(N, C) * 3


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 3, 4, 0])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_the_seed_formula(logits, labels, eps):
    one_hot = F.one_hot(labels, C).float()
    target = (1 - eps) * one_hot + eps / C
    expected = (-target * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(label_smoothing_ce(logits, labels, eps), expected)


def test_label_smoothing_accepts_soft_targets(logits):
    soft = torch.rand(N, C).softmax(1)
    eps = 0.1
    expected = (-((1 - eps) * soft + eps / C) * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(label_smoothing_ce(logits, soft, eps), expected)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_kl_matches_definition(logits, temperature):
    teacher = torch.randn(N, C) * 2
    p_t = (teacher / temperature).softmax(1)
    p_s = (logits / temperature).softmax(1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * temperature**2
    torch.testing.assert_close(kd_kl_loss(logits, teacher, temperature), expected)


def test_kd_kl_is_zero_for_identical_logits(logits):
    assert kd_kl_loss(logits, logits.clone(), 3.0).abs().item() < 1e-6


def test_kd_kl_gradient_flows_to_student_only(logits):
    student = logits.clone().requires_grad_()
    teacher = torch.randn(N, C, requires_grad=True)
    kd_kl_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_refinery_with_one_hot_teacher_equals_cross_entropy(logits, labels):
    teacher = F.one_hot(labels, C).float() * 1000.0  # softmax is exactly one-hot in float32
    torch.testing.assert_close(refinery_loss(logits, teacher), F.cross_entropy(logits, labels))


def test_refinery_is_cross_entropy_against_teacher_softmax(logits):
    teacher = torch.randn(N, C)
    expected = (-teacher.softmax(1) * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(refinery_loss(logits, teacher), expected)


def test_attention_map_definition():
    features = torch.randn(2, 3, 4, 4)
    expected = features.pow(2).mean(1).reshape(2, 16)
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(attention_map(features), expected)
    torch.testing.assert_close(attention_map(features).norm(dim=1), torch.ones(2))


def test_attention_transfer_distance():
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 8, 4, 4)
    expected = (attention_map(student) - attention_map(teacher)).pow(2).mean()
    torch.testing.assert_close(attention_transfer_loss(student, teacher), expected)
    # scale-invariant (L2 normalized) and independent of the channel count
    assert attention_transfer_loss(student, 7.0 * student).item() < 1e-10
    same = torch.cat([student, student], dim=1)
    assert attention_transfer_loss(student, same).item() < 1e-10


def test_attention_transfer_pools_the_larger_map():
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)
    pooled = F.adaptive_avg_pool2d(teacher, (4, 4))
    torch.testing.assert_close(
        attention_transfer_loss(student, teacher), attention_transfer_loss(student, pooled)
    )


def test_center_loss_formula_and_soft_targets(labels):
    loss = CenterLoss(C, 3)
    features = torch.randn(N, 3)
    expected = 0.5 * sum((features[i] - loss.centers[labels[i]]).pow(2).sum() for i in range(N)) / N
    torch.testing.assert_close(loss(features, labels), expected)
    soft = F.one_hot(labels, C).float() * 0.6 + 0.08
    torch.testing.assert_close(loss(features, soft), expected)
    assert torch.equal(hard_labels(soft), labels)


def test_bnn_loss_is_the_weighted_sum_of_its_parts(logits, labels):
    weights = {"kd_weight": 0.3, "refinery_weight": 0.2, "feature_weight": 5.0}
    crit = BNNLoss(0.1, kd_temperature=2.0, center_weight=0.01, num_classes=C, num_features=3)
    crit.set_weights(**weights)
    teacher = torch.randn(N, C)
    features = torch.randn(N, 3)
    pairs = [(torch.randn(N, 2, 4, 4), torch.randn(N, 4, 4, 4))] * 2
    parts = crit(logits, labels, teacher, features, pairs)
    assert set(parts) == {
        "loss", "loss_ce", "loss_kd", "loss_refinery", "loss_feature", "loss_center"
    }  # fmt: skip
    torch.testing.assert_close(parts["loss_ce"], label_smoothing_ce(logits, labels, 0.1))
    torch.testing.assert_close(parts["loss_kd"], kd_kl_loss(logits, teacher, 2.0))
    torch.testing.assert_close(parts["loss_feature"], 2 * attention_transfer_loss(*pairs[0]))
    expected = (
        0.5 * parts["loss_ce"] + 0.3 * parts["loss_kd"] + 0.2 * parts["loss_refinery"]
        + 5.0 * parts["loss_feature"] + 0.01 * parts["loss_center"]
    )  # fmt: skip
    torch.testing.assert_close(parts["loss"], expected)


def test_bnn_loss_defaults_to_label_smoothing_only(logits, labels):
    parts = BNNLoss()(logits, labels)
    assert set(parts) == {"loss", "loss_ce"}
    torch.testing.assert_close(parts["loss"], label_smoothing_ce(logits, labels, 0.1))


def test_bnn_loss_rejects_bad_weights():
    with pytest.raises(ValueError, match="<= 1"):
        BNNLoss(kd_weight=0.7, refinery_weight=0.5)
    with pytest.raises(ValueError, match="Unknown loss weights"):
        BNNLoss().set_weights(kd=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        BNNLoss(feature_weight=-1.0)
    with pytest.raises(ValueError, match="num_features"):
        BNNLoss(center_weight=0.1, num_classes=3)


def test_bnn_loss_needs_teacher_logits_for_kd(logits, labels):
    with pytest.raises(ValueError, match="teacher logits"):
        BNNLoss(kd_weight=0.5)(logits, labels)


def test_set_weights_creates_centers_once():
    crit = BNNLoss(num_classes=C, num_features=4)
    assert crit.center_loss is None
    crit.set_weights(center_weight=0.1)
    centers = crit.center_loss
    assert centers is not None and centers.centers.shape == (C, 4)
    crit.set_weights(center_weight=0.2)
    assert crit.center_loss is centers and math.isclose(crit.center_weight, 0.2)


def test_feature_hooks_record_named_outputs():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    hooks = FeatureHooks(net, ["0", "2"])
    x = torch.randn(5, 4)
    first = x @ net[0].weight.T + net[0].bias
    out = net(x)
    recorded = hooks.pop()
    torch.testing.assert_close(recorded["0"], first)
    torch.testing.assert_close(recorded["2"], out)
    assert hooks.pop() == {}
    hooks.enabled = False
    net(x)
    assert hooks.pop() == {}
    hooks.enabled = True
    hooks.remove()
    net(x)
    assert hooks.pop() == {}
    with pytest.raises(ValueError, match="No submodule named"):
        FeatureHooks(net, ["layer4"])
