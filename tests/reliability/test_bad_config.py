"""4. A mistake in the configuration is one sentence that names the key (or value) and the fix.

Tried: unknown quantizer and model names (Python and CLI), lr <= 0 (module and optimizer),
``num_classes`` that disagrees with the net, the data or a checkpoint (``init_from`` and
``--ckpt_path``), a stage-2 ``init_from`` of another architecture, a global batch size not
divisible by the devices, and a teacher with other classes than the student.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from reliability_helpers import (
    TINY_CONFIG,
    save_checkpoint,
    tensor_loader,
    tiny_module,
    tiny_net,
    tiny_trainer,
)

from bnn_lightning.cli import BNNCLI
from bnn_lightning.data import ImageFolderDataModule
from bnn_lightning.models import BinaryResNet, create_model, list_models
from bnn_lightning.module import BNNClassifier


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("key", ["activation_quantizer", "weight_quantizer"])
def test_4_unknown_quantizer_name_lists_the_valid_ones(key: str) -> None:
    with pytest.raises(ValueError) as err:
        BinaryResNet("resnet18", 4, stem="cifar", width=8, **{key: "stesign"})
    assert one_line(err).startswith("Unknown quantizer 'stesign'; use one of approx_sign,")


def test_4_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        create_model("resnet19_cifar")
    names = ", ".join(list_models())
    assert one_line(err) == f"Unknown model 'resnet19_cifar'; use one of {names}."
    with pytest.raises(ValueError) as err:
        BinaryResNet(arch="resnet19")
    assert (
        one_line(err)
        == "Unknown arch 'resnet19'; use one of resnet10, resnet18, resnet34, resnet50."
    )


def test_4_unknown_model_class_in_the_cli_names_the_key(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--config", str(TINY_CONFIG), "--data.init_args.root", str(image_tree)]
    with pytest.raises(SystemExit):
        BNNCLI(args=[*args, "--model.net.class_path", "bnn_lightning.BinaryResNett"], run=False)
    err = capsys.readouterr().err
    assert 'Parser key "model.net"' in err and "BinaryResNett" in err


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan])
def test_4_non_positive_lr_is_refused_when_the_module_is_built(lr: float) -> None:
    with pytest.raises(ValueError) as err:
        tiny_module(lr=lr)
    assert one_line(err) == f"lr={lr} must be a positive number; set lr to e.g. 1e-3."


@pytest.mark.parametrize(("lr", "says"), [(-0.1, "Invalid learning rate: -0.1"), (0.0, "lr=0.0")])
def test_4_non_positive_optimizer_lr_names_the_setting(
    lr: float, says: str, tmp_path: Path
) -> None:
    module = tiny_module(optimizer=partial(torch.optim.Adam, lr=lr))
    with pytest.raises(ValueError) as err:
        tiny_trainer(tmp_path).fit(module, tensor_loader())
    assert says in one_line(err) and "model.optimizer.init_args" in str(err.value)


def test_4_num_classes_disagreeing_with_the_net_or_the_data(
    image_tree: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as err:
        BNNClassifier(tiny_net(10), num_classes=4)
    assert one_line(err).startswith("num_classes=4 but the net has 10 outputs; build the net")

    data = ImageFolderDataModule(str(image_tree), pipeline="cifar", image_size=16, val_size=8)
    with pytest.raises(ValueError) as err:
        tiny_trainer(tmp_path).fit(tiny_module(10), data)
    assert one_line(err) == (
        "model num_classes=10 but the data has 4 classes; set the model's num_classes to 4 "
        "(the CLI links it from data.num_classes)."
    )


@pytest.fixture(scope="module")
def ten_class_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ten")
    return save_checkpoint(tiny_module(10), root / "ten_classes.ckpt", root)


def test_4_num_classes_disagreeing_with_a_checkpoint(
    ten_class_checkpoint: Path, tmp_path: Path
) -> None:
    says = "num_classes=10 (this net: 4)"
    stage2 = tiny_module(init_from=str(ten_class_checkpoint))
    with pytest.raises(ValueError) as err:
        tiny_trainer(tmp_path).fit(stage2, tensor_loader())
    assert str(ten_class_checkpoint) in one_line(err) and says in str(err.value)
    with pytest.raises(ValueError) as err:  # resume with --ckpt_path
        tiny_trainer(tmp_path).fit(tiny_module(), tensor_loader(), ckpt_path=ten_class_checkpoint)
    assert str(ten_class_checkpoint) in one_line(err) and says in str(err.value)


def test_4_stage2_init_from_another_architecture_names_the_argument(
    ten_class_checkpoint: Path, tmp_path: Path
) -> None:
    net = BinaryResNet("resnet34", 10, stem="cifar", width=8)
    module = BNNClassifier(net, init_from=str(ten_class_checkpoint))
    with pytest.raises(ValueError) as err:
        tiny_trainer(tmp_path).fit(module, tensor_loader(num_classes=10))
    message = one_line(err)
    assert str(ten_class_checkpoint) in message
    assert message.endswith("as the run that saved them: arch='resnet18' (this net: 'resnet34').")


def test_4_global_batch_not_divisible_by_the_devices(image_tree: Path) -> None:
    data = ImageFolderDataModule(str(image_tree), pipeline="cifar", image_size=16, batch_size=10)
    data.trainer = L.Trainer(accelerator="cpu", devices=3, strategy="ddp", logger=False)
    with pytest.raises(ValueError) as err:
        data.setup("fit")
    assert one_line(err) == (
        "batch_size=10 (the global batch) is not divisible by the 3 devices; use a multiple of 3."
    )


def test_4_teacher_with_other_classes_than_the_student(
    ten_class_checkpoint: Path, tmp_path: Path
) -> None:
    module = tiny_module(teacher=str(ten_class_checkpoint), kd_weight=0.5)
    with pytest.raises(ValueError) as err:
        tiny_trainer(tmp_path).fit(module, tensor_loader())
    assert one_line(err) == (
        f"The teacher {ten_class_checkpoint} predicts 10 classes but the student 4; use a "
        "teacher trained on the same 4 classes (model.init_args.teacher)."
    )
