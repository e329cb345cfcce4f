"""The distillation terms a fit logs equal their definitions, computed here from the student's and
the teacher's outputs on the same batch (not from ``bnn_lightning.losses``).

- KL distillation (Hinton et al., 2015): ``T^2 * mean_n sum_c p_t (log p_t - log p_s)`` with
  ``p = softmax(logits / T)``;
- label refinery (Bagherinezhad et al., 2018): cross-entropy against the teacher's softmax;
- attention transfer (Zagoruyko & Komodakis, ICLR 2017), the HolmesShuan collection's
  "feature-map matching after L2 normalization": per pair of feature maps, the L2-normalized
  channel mean of squares, the larger map average-pooled to the smaller, mean squared difference;
  summed over the configured pairs (here student ``stages.1`` with teacher ``stages.1`` and
  student ``stages.3`` with teacher ``stages.2``, so the pairing is checked too);
- the label term: cross-entropy with label smoothing ``eps``, target ``(1 - eps) y + eps / C``;
- the total: ``(1 - kd - refinery) ce + kd kl + refinery ref + feature_weight at``.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.models import create_model
from bnn_lightning.module import BNNClassifier

C, N, T, EPS = 5, 8, 4.0, 0.1
WEIGHTS = {"kd_weight": 0.3, "refinery_weight": 0.2, "feature_weight": 50.0}
PAIRS = {"stages.1": "stages.1", "stages.3": "stages.2"}


def stage_outputs(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Logits and the output of every stage, by running the net's parts in order."""
    out, stages = net.stem(x), []
    for stage in net.stages:
        out = stage(out)
        stages.append(out)
    return net.fc(net.pool(out).flatten(1)), stages


def attention(features: torch.Tensor) -> torch.Tensor:
    a = features.pow(2).mean(dim=1).flatten(1)
    return a / a.norm(dim=1, keepdim=True)


def definitions(student, teacher, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    s, s_stages = stage_outputs(student, x)
    with torch.no_grad():
        t, t_stages = stage_outputs(teacher, x)
    log_ps, log_pt = (s / T).log_softmax(1), (t / T).log_softmax(1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * T**2
    refinery = -(t.softmax(1) * s.log_softmax(1)).sum(1).mean()
    target = (1 - EPS) * F.one_hot(y, C) + EPS / C
    ce = -(target * s.log_softmax(1)).sum(1).mean()
    at = torch.zeros(())
    for s_name, t_name in PAIRS.items():
        fs, ft = s_stages[int(s_name[-1])], t_stages[int(t_name[-1])]
        size = min(fs.shape[-1], ft.shape[-1])  # square maps: pool the larger one
        fs, ft = F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)
        at = at + (attention(fs) - attention(ft)).pow(2).mean()
    label = 1 - WEIGHTS["kd_weight"] - WEIGHTS["refinery_weight"]
    total = label * ce + WEIGHTS["kd_weight"] * kl + WEIGHTS["refinery_weight"] * refinery
    total = total + WEIGHTS["feature_weight"] * at
    return {"loss_ce": ce, "loss_kd": kl, "loss_refinery": refinery, "loss_feature": at,
            "loss": total}  # fmt: skip


def test_logged_distillation_terms_equal_their_definitions(tmp_path) -> None:
    torch.manual_seed(0)
    student = create_model("resnet10_cifar", width=8, num_classes=C)
    teacher = create_model("resnet10_cifar", width=16, num_classes=C, mode="float")
    for m in teacher.modules():  # a teacher whose BatchNorms are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2)
    x, y = torch.randn(N, 3, 32, 32), torch.arange(N) % C
    expected = definitions(copy.deepcopy(student).train(), copy.deepcopy(teacher).eval(), x, y)
    module = BNNClassifier(
        student, C, teacher=teacher, kd_temperature=T, label_smoothing=EPS,
        feature_pairs=PAIRS, **WEIGHTS,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=N))
    logged = {k.removeprefix("train/"): float(v) for k, v in trainer.callback_metrics.items()}
    for name, value in expected.items():
        assert logged[name] == pytest.approx(float(value), rel=1e-5, abs=1e-7), name
    assert all(float(v) > 0 for v in expected.values())  # every term is active
