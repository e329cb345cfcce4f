"""Each loss against its textbook formula on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
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
def test_label_smoothing_matches_holmesshuan_formula(logits, labels, eps):
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
    loss = CenterLoss(C, 3).eval()  # eval: measures, does not update
    loss.centers.normal_()
    features = torch.randn(N, 3)
    expected = 0.5 * sum((features[i] - loss.centers[labels[i]]).pow(2).sum() for i in range(N)) / N
    torch.testing.assert_close(loss(features, labels), expected)
    soft = F.one_hot(labels, C).float() * 0.6 + 0.08
    torch.testing.assert_close(loss(features, soft), expected)
    assert torch.equal(hard_labels(soft), labels)


def wen_update(centers: torch.Tensor, x: torch.Tensor, y: torch.Tensor, alpha: float):
    """Wen et al. (ECCV 2016), Algorithm 1: ``c_j -= alpha * sum_{i: y_i = j} (c_j - x_i) /
    (1 + n_j)``, written as the paper's sums over the batch."""
    new = centers.clone()
    for j in range(len(centers)):
        members = [i for i in range(len(y)) if y[i] == j]
        delta = sum((centers[j] - x[i] for i in members), torch.zeros_like(centers[j]))
        new[j] = centers[j] - alpha * delta / (1 + len(members))
    return new


def test_center_update_follows_wen_et_al():
    """One step against the formula; classes 2 and 4 are absent and keep their centers."""
    loss = CenterLoss(C, 3)
    loss.centers.copy_(torch.randn(C, 3) * 4)
    loss.initialized.fill_(True)
    before = loss.centers.clone()
    x, y = torch.randn(7, 3), torch.tensor([0, 1, 3, 0, 0, 3, 1])
    value = loss(x, y)  # training mode: the loss, then the update
    expected = 0.5 * sum((x[i] - before[y[i]]).pow(2).sum() for i in range(7)) / 7
    torch.testing.assert_close(value, expected)  # measured against the centers before the step
    torch.testing.assert_close(loss.centers, wen_update(before, x, y, 0.5))
    assert torch.equal(loss.centers[[2, 4]], before[[2, 4]])
    assert not list(loss.parameters())  # outside the optimizer


def test_centers_start_at_their_class_mean():
    loss = CenterLoss(C, 3)
    x, y = torch.randn(6, 3) * 50 + 100, torch.tensor([0, 0, 1, 1, 1, 3])
    loss.update(x, y)
    torch.testing.assert_close(loss.centers[0], x[:2].mean(0))
    torch.testing.assert_close(loss.centers[1], x[2:5].mean(0))
    assert loss.initialized.tolist() == [True, True, False, True, False]
    assert torch.equal(loss.centers[[2, 4]], torch.zeros(2, 3))
    x2 = torch.randn(3, 3)
    loss.update(x2, torch.tensor([2, 0, 2]))  # class 2 starts at its mean, class 0 moves
    torch.testing.assert_close(loss.centers[2], x2[[0, 2]].mean(0))
    torch.testing.assert_close(loss.centers[0], x[:2].mean(0) - 0.5 * (x[:2].mean(0) - x2[1]) / 2)


def center_batches() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start centers (class 4 not yet seen) and a batch of 8 in which class 4 is on rank 1 only."""
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 0, 4, 2, 1, 0, 3])  # rank 0 takes y[0::2], rank 1 y[1::2]
    return torch.randn(C, 3, generator=g), torch.randn(8, 3, generator=g), y


def center_update_on_rank(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    start, x, y = center_batches()
    loss = CenterLoss(C, 3)
    loss.centers.copy_(start)
    loss.initialized[:4] = True
    loss.update(x[rank::2], y[rank::2])
    torch.save(loss.centers, out + str(rank))
    dist.destroy_process_group()


@pytest.mark.ddp
def test_center_update_sums_over_ranks(tmp_path):
    """Two gloo processes with half the batch each end with the whole batch's update."""
    mp.spawn(center_update_on_rank, args=(str(tmp_path / "store"), str(tmp_path / "r")), nprocs=2)
    start, x, y = center_batches()
    expected = wen_update(start, x, y, 0.5)
    expected[4] = x[3]  # first seen: its mean
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / f"r{rank}", weights_only=True), expected)


def test_center_alpha_is_checked():
    with pytest.raises(ValueError, match=r"center_alpha=1.5 must be in \(0, 1\]"):
        BNNLoss(center_weight=0.1, num_classes=C, num_features=3, center_alpha=1.5)


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
