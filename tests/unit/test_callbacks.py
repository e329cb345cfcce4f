"""Callbacks driven by a minimal stand-in trainer (the real-Trainer runs are in tests/e2e)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from bnn_lightning.callbacks import ActivationCurriculum, BNNDiagnostics, StageHandoff, WeightClip
from bnn_lightning.layers import BinaryConv2d, get_modes
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier
from bnn_lightning.quantizers import Clamp, LeakyClip, ReLU, SteSign


class Strategy:
    """What the callbacks use of a Lightning strategy."""

    def __init__(self, module: Any) -> None:
        self.module, self.optimizers = module, []

    def setup_optimizers(self, trainer: Any) -> None:
        self.optimizers = [self.module.configure_optimizers()]

    def reduce(self, tensor: torch.Tensor, group: Any = None, reduce_op: str = "mean") -> Any:
        assert reduce_op == "sum" and group is None
        return tensor


class DataModule:
    jitter = True

    def set_color_jitter(self, enabled: bool) -> None:
        self.jitter = enabled


def fake_trainer(module: Any, epoch: int = 0, step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        current_epoch=epoch, global_step=step, strategy=Strategy(module), datamodule=DataModule()
    )


def stage1_module() -> BNNClassifier:
    net = BinaryResNet("resnet18", num_classes=10, stem="cifar", width=8, mode="binary_activations")
    adam = partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-5)
    return BNNClassifier(net, optimizer=adam)


def test_stage_handoff_switches_at_its_epoch():
    module = stage1_module()
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    handoff = StageHandoff(
        epoch=2, lr=2e-4, weight_decay=0.0, teacher_from_stage1=True,
        loss_weights={"kd_weight": 0.5},
    )  # fmt: skip
    trainer = fake_trainer(module, epoch=1)
    handoff.on_train_epoch_start(trainer, module)
    assert not handoff.done and trainer.strategy.optimizers == []
    trainer.current_epoch = 2
    handoff.on_train_epoch_start(trainer, module)
    n = len(get_modes(module.net))
    assert n == 1 and get_modes(module.net)["binary"] > 0
    assert set(get_modes(module.teacher)) == {"binary_activations"}
    for k, v in module.net.state_dict().items():
        assert torch.equal(v, before[k]) and torch.equal(module.teacher.state_dict()[k], v)
    (optimizer,) = trainer.strategy.optimizers
    assert optimizer.state == {}
    assert {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups} == {(2e-4, 0.0)}
    assert module.criterion.kd_weight == 0.5
    assert module.hparams["net"]["init_args"]["mode"] == "binary"
    assert trainer.datamodule.jitter is False


def test_stage_handoff_is_reapplied_on_resume():
    module = stage1_module()
    handoff = StageHandoff(epoch=1, lr=2e-4, teacher_from_stage1=True)
    handoff.on_train_epoch_start(fake_trainer(module, epoch=1), module)
    teacher_state = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(1.0)  # stage-2 training moved the student away from the teacher
    checkpoint = {"callbacks": {handoff.state_key: handoff.state_dict()}}

    resumed, again = stage1_module(), StageHandoff(epoch=1, lr=2e-4, teacher_from_stage1=True)
    trainer = fake_trainer(resumed, epoch=3)
    again.on_load_checkpoint(trainer, resumed, checkpoint)
    again.load_state_dict(checkpoint["callbacks"][again.state_key])
    assert again.done and set(get_modes(resumed.net)) == {"binary"}
    assert resumed.lr == 2e-4 and resumed.weight_decay == 0.0
    for k, v in resumed.teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k])
    again.on_train_epoch_start(trainer, resumed)  # already done: no second switch
    assert trainer.strategy.optimizers == []


def test_weight_clip_only_touches_binarized_weights():
    net = nn.Sequential(BinaryConv2d(2, 2, 1), BinaryConv2d(2, 2, 1, weight_quantizer=None))
    with torch.no_grad():
        for layer in net:
            layer.weight.copy_(torch.tensor([3.0, -2.0, 0.5, -0.25]).view(2, 2, 1, 1))
    WeightClip(1.0).on_train_batch_end(None, net, None, None, 0)
    assert net[0].weight.flatten().tolist() == [1.0, -1.0, 0.5, -0.25]
    assert net[1].weight.flatten().tolist() == [3.0, -2.0, 0.5, -0.25]


def test_activation_curriculum_follows_the_schedule():
    module = stage1_module()
    curriculum = ActivationCurriculum({2: "leaky_clip", 0: "relu", 6: "ste_sign", 4: "clamp"})
    expected = [ReLU, ReLU, LeakyClip, LeakyClip, Clamp, Clamp, SteSign, SteSign]
    for epoch, cls in enumerate(expected):
        curriculum.on_train_epoch_start(fake_trainer(module, epoch), module)
        layers = [m for m in module.net.modules() if isinstance(m, BinaryConv2d)]
        assert all(type(layer.input_quantizer) is cls for layer in layers), epoch
    assert module.hparams["net"]["init_args"]["activation_quantizer"] == "ste_sign"
    with pytest.raises(ValueError, match="Unknown quantizer"):
        ActivationCurriculum({0: "sine"})


class Logger:
    """Stands in for a LightningModule: holds the net and records ``log_dict``."""

    def __init__(self, net: nn.Module) -> None:
        self.net, self.logged, self.calls = net, {}, 0

    def log_dict(self, metrics: dict[str, torch.Tensor], **kwargs: Any) -> None:
        self.logged = {k: float(v) for k, v in metrics.items()}
        self.calls += 1


def test_diagnostics_match_hand_counts():
    layer = BinaryConv2d(4, 4, 1, input_quantizer=SteSign(clip=1.5))
    net = nn.Sequential(layer)
    module, diag = Logger(net), BNNDiagnostics(every_n_steps=3)
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.6, 2.0, -0.1, 3.0]).view(2, 4, 1, 1)

    def step(global_step: int, batch: torch.Tensor) -> None:
        trainer = fake_trainer(module, step=global_step)
        diag.on_train_batch_start(trainer, module, None, 0)
        net(batch)
        trainer.global_step += 1  # the optimizer step
        diag.on_train_batch_end(trainer, module, None, None, 0)

    step(0, x)
    assert module.logged["diag/sign_balance/0"] == pytest.approx(5 / 8)
    assert module.logged["diag/saturation/0"] == pytest.approx(4 / 8)  # |x| > 1.5
    assert "diag/flip_ratio/0" not in module.logged  # nothing to compare with yet
    with torch.no_grad():
        layer.weight.view(-1)[:4].mul_(-1.0)
    module.logged = {}
    step(1, x)
    assert module.logged == {} and not layer._forward_pre_hooks  # no hooks off the log steps
    step(3, -x)
    assert module.logged["diag/flip_ratio/0"] == pytest.approx(4 / 16)
    assert module.logged["diag/sign_balance/0"] == pytest.approx(4 / 8)  # -0.0 >= 0
    assert module.logged["diag/flip_ratio_mean"] == pytest.approx(4 / 16)


def test_diagnostics_log_once_per_optimizer_step_under_gradient_accumulation():
    """Two micro-batches, x then -x, make one optimizer step: one log, counts over both."""
    layer = BinaryConv2d(4, 4, 1, input_quantizer=SteSign(clip=1.5))
    module, diag = Logger(nn.Sequential(layer)), BNNDiagnostics(every_n_steps=1)
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.6, 2.0, -0.1, 3.0]).view(2, 4, 1, 1)
    trainer = fake_trainer(module, step=0)
    for i, batch in enumerate((x, -x)):
        diag.on_train_batch_start(trainer, module, None, i)
        module.net(batch)
        trainer.global_step += i  # the optimizer steps after the second micro-batch
        diag.on_train_batch_end(trainer, module, None, None, i)
    assert module.calls == 1
    assert module.logged["diag/sign_balance/0"] == pytest.approx((5 + 4) / 16)
    assert module.logged["diag/saturation/0"] == pytest.approx((4 + 4) / 16)
    assert not layer._forward_pre_hooks
