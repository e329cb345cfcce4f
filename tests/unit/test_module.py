"""BNNClassifier without a Trainer: parameter groups, teacher handling, checkpoints, errors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from bnn_lightning.checkpoints import (
    load_checkpoint,
    load_net_weights,
    load_teacher,
    net_from_checkpoint,
)
from bnn_lightning.layers import BinaryConv2d
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier


def tiny(width: int = 8, arch: str = "resnet18", **kwargs) -> BinaryResNet:
    return BinaryResNet(arch, num_classes=10, stem="cifar", width=width, **kwargs)


class Plain(nn.Module):
    """Every kind of parameter: conv, BN, PReLU, binary conv, linear with bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.PReLU(4)
        self.bconv = BinaryConv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)
        self.num_classes, self.num_features = 10, 4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bconv(self.act(self.bn(self.conv(x)))).mean((2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def groups_of(module: BNNClassifier) -> dict[str, dict]:
    optimizer = module.configure_optimizers()
    return {g["name"]: g for g in optimizer.param_groups}


def test_no_decay_groups_hold_norms_biases_and_prelu():
    adam = partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-5)
    module = BNNClassifier(Plain(), optimizer=adam, no_decay_norm_bias=True, center_weight=0.1)
    net = module.net
    groups = groups_of(module)
    decayed = {net.conv.weight, net.bconv.weight, net.fc.weight}
    assert set(groups["decay"]["params"]) == decayed
    assert set(groups["no_decay"]["params"]) == {
        net.bn.weight, net.bn.bias, net.act.weight, net.fc.bias
    }  # fmt: skip
    assert groups["decay"]["weight_decay"] == 1e-5 and groups["no_decay"]["weight_decay"] == 0
    assert set(groups) == {"decay", "no_decay"}  # Wen et al.'s update moves the centers
    assert groups["decay"]["lr"] == 1e-3


def test_lr_and_weight_decay_overrides_and_single_group():
    adam = partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-5)
    module = BNNClassifier(Plain(), optimizer=adam, lr=2e-4, weight_decay=0.0)
    groups = groups_of(module)
    assert list(groups) == ["decay"]
    assert groups["decay"]["lr"] == 2e-4 and groups["decay"]["weight_decay"] == 0.0
    assert len(groups["decay"]["params"]) == len(list(module.net.parameters()))


def test_default_optimizer_is_adam_with_default_betas():
    optimizer = BNNClassifier(Plain()).configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["betas"] == (0.9, 0.999)


def test_scheduler_interval_is_passed_to_lightning():
    sched = partial(torch.optim.lr_scheduler.StepLR, step_size=3)
    config = BNNClassifier(Plain(), lr_scheduler=sched, scheduler_interval="step")
    out = config.configure_optimizers()
    assert out["lr_scheduler"]["interval"] == "step"
    assert isinstance(out["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_num_classes_is_checked_against_the_net():
    with pytest.raises(ValueError, match="num_classes=100 but the net has 10"):
        BNNClassifier(tiny(), num_classes=100)
    assert BNNClassifier(tiny()).num_classes == 10


def test_teacher_is_frozen_and_not_a_submodule():
    teacher = tiny(mode="float")
    module = BNNClassifier(tiny(), teacher=teacher, kd_weight=0.5)
    assert module.teacher is teacher
    assert not any(k.startswith("teacher") or "_teacher" in k for k in module.state_dict())
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in module.parameters()}
    module.train()
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distillation_without_teacher_is_an_error():
    with pytest.raises(ValueError, match="needs a teacher"):
        BNNClassifier(tiny(), kd_weight=0.5)


def test_snapshot_is_a_frozen_copy_without_feature_hooks():
    module = BNNClassifier(tiny(), feature_pairs={"stages.3": "stages.3"})
    copy = module.snapshot_net()
    assert copy is not module.net and not copy.training
    for a, b in zip(copy.state_dict().values(), module.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(2, 3, 8, 8)
    copy(x)
    assert module._student_hooks.pop() == {}
    module.net(x)
    assert set(module._student_hooks.pop()) == {"stages.3"}


def save_like_lightning(module: BNNClassifier, path: Path) -> Path:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_hparams_are_plain_and_rebuild_the_net(tmp_path):
    module = BNNClassifier(tiny(mode="binary_activations"), optimizer=torch.optim.SGD)
    assert "optimizer" not in module.hparams  # a class object is not weights_only loadable
    assert module.hparams["net"]["init_args"]["mode"] == "binary_activations"
    path = save_like_lightning(module, tmp_path / "run.ckpt")
    net = net_from_checkpoint(path)
    x = torch.randn(2, 3, 8, 8)
    module.eval(), net.eval()
    torch.testing.assert_close(net(x), module.net(x))
    teacher = load_teacher(str(path))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_init_from_loads_exactly(tmp_path):
    stage1 = BNNClassifier(tiny(mode="binary_activations"))
    path = save_like_lightning(stage1, tmp_path / "stage1.ckpt")
    stage2_net = tiny(mode="binary")
    load_net_weights(stage2_net, path)
    for k, v in stage1.net.state_dict().items():
        assert torch.equal(stage2_net.state_dict()[k], v)


@pytest.mark.parametrize(
    ("other", "found"),
    [
        (lambda: tiny(width=16), "shape: fc.weight (10, 64) vs (10, 128)"),
        (lambda: tiny(arch="resnet34"), "missing: stages.0.4"),
    ],
)
def test_architecture_mismatch_is_one_clear_error(tmp_path, other, found):
    path = save_like_lightning(BNNClassifier(tiny()), tmp_path / "stage1.ckpt")
    with pytest.raises(ValueError) as err:
        load_net_weights(other(), path)
    message = str(err.value)
    assert str(path) in message and found in message
    assert "same architecture" in message


def test_unexpected_keys_are_listed(tmp_path):
    path = save_like_lightning(BNNClassifier(tiny(arch="resnet34")), tmp_path / "big.ckpt")
    with pytest.raises(ValueError, match=r"unexpected: stages\.0\.4"):
        load_net_weights(tiny(), path)


def test_torchvision_teacher_from_a_weights_file(tmp_path):
    import torchvision

    reference = torchvision.models.get_model("mobilenet_v3_small", num_classes=10).eval()
    weights = tmp_path / "mobilenet.pth"
    torch.save(reference.state_dict(), weights)
    teacher = load_teacher("torchvision:mobilenet_v3_small", str(weights), num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(teacher(x), reference(x))
    with pytest.raises(ValueError, match="needs teacher_weights"):
        load_teacher("torchvision:resnet18")


def test_checkpoint_files_are_read_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "callable": print}, path)
    with pytest.raises(ValueError, match=r"refers to the Python object print.*refused unread"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
