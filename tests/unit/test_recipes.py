"""The recipes in ``configs/`` train as their sources publish them.

Each recipe is instantiated by the CLI (``BNNCLI(run=False)``, composed as a user runs it) and its
resolved objects are read: the optimizer, its parameter groups and the lr at every epoch (or
step) of the run, the run's length, the network's BatchNorm momentum and binary mode, the loss
weights and the data pipeline's settings. The expected values are the sources' own:

- HolmesShuan collection ("Training Tricks for Binarized Neural Networks", 2019): Adam with its
  default betas; stage 1 at lr 1e-3 and weight decay 1e-5, stage 2 at 2e-4 and 0; CIFAR-100 x0.2
  at epochs 150, 250, 320 of 350, ImageNet x0.1 at 40, 60, 70 of 75; one stage: 5 epochs at 1e-3,
  then 4e-3; BatchNorm momentum 0.2; label smoothing 0.1; CIFAR RandomCrop(32, 4), flip,
  RandomRotation(15); ImageNet RandomResizedCrop(224, scale 0.08-1), Lighting(0.1), colour jitter
  in stage 1 only, test images resized by 1.15 or 1.35 and center-cropped.
- Bi-Real Net (Liu et al., ECCV 2018): ResNet-18 with a shortcut around every binary 3x3 conv
  (16 of them); real-valued first conv, downsample shortcuts and classifier.
- ReActNet (Liu et al., ECCV 2020): two steps of 256 epochs, Adam at 5e-4 for batch 256 decayed
  linearly to 0, weight decay 1e-5 then 0, the distributional loss from a real-valued teacher
  alone (KL at T = 1, no label term), ReActNet blocks with Bi-Real's ApproxSign, AvgPool -> 1x1
  conv downsample, PyTorch's BatchNorm momentum (0.1); test images resized to 256, center 224.
- Wen et al. (ECCV 2016), the center loss: lambda 0.003, alpha 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bnn_lightning.cli import BNNCLI
from bnn_lightning.layers import BinaryConv2d, get_modes
from bnn_lightning.schedules import RunLength

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STEPS_PER_EPOCH = 3  # for schedules stepped per optimizer step

pytestmark = pytest.mark.filterwarnings(
    "ignore:LightningCLI's args parameter", "ignore:Detected call of `lr_scheduler.step()`"
)


@dataclass
class Recipe:
    """What a recipe must resolve to. ``lr(e)`` is the lr at (fractional) epoch ``e``."""

    files: tuple[str, ...]
    lr: Any
    weight_decay: float
    epochs: int
    mode: str
    bn_momentum: float = 0.2
    label_smoothing: float = 0.1
    loss: dict[str, float] = field(default_factory=dict)
    net: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    decay_norms: bool = True  # weight decay on norms and biases too (False: conv/linear only)
    init_from: bool = False
    test_resize: tuple[int, ...] = (257, 302)  # HolmesShuan: int(224 * 1.15) or int(224 * 1.35)


def steps(lr: float, milestones: tuple[int, ...], gamma: float, warmup: tuple = ()) -> Any:
    """HolmesShuan's ``adjust_learning_rate``, after an optional ``(epochs, lr)`` warm-up."""

    def at(epoch: float) -> float:
        if warmup and epoch < warmup[0]:
            return warmup[1]
        return lr * gamma ** sum(epoch >= m for m in milestones)

    return at


def linear(lr: float, epochs: int) -> Any:
    """Bi-Real Net / ReActNet: ``lr * (1 - t / T)``."""
    return lambda epoch: lr * (1 - epoch / epochs)


CIFAR = {"padding": 4, "rotation": 15.0}
IMAGENET = {"train_crop": "random_resized", "lighting": 0.1}
C100, IN = (150, 250, 320), (40, 60, 70)
REACTNET = {"block": "reactnet", "activation_quantizer": "approx_sign", "downsample": "v2"}
REACTNET_LOSS = {"kd_weight": 1.0, "kd_temperature": 1.0, "label": 0.0}

RECIPES: dict[str, Recipe] = {
    "cifar100/stage1": Recipe(
        ("cifar100/base", "cifar100/stage1"), steps(1e-3, C100, 0.2), 1e-5, 350,
        "binary_activations", data=CIFAR,
    ),
    "cifar100/stage2": Recipe(
        ("cifar100/base", "cifar100/stage2"), steps(2e-4, C100, 0.2), 0.0, 350, "binary",
        data=CIFAR, init_from=True,
    ),
    "cifar100/one_stage": Recipe(
        ("cifar100/base", "cifar100/one_stage"), steps(4e-3, C100, 0.2, (5, 1e-3)), 1e-5, 350,
        "binary", data=CIFAR,
    ),
    "cifar100/stage2_center": Recipe(
        ("cifar100/base", "cifar100/stage2", "cifar100/stage2_center"),
        steps(2e-4, C100, 0.2), 0.0, 350, "binary", data=CIFAR, init_from=True,
        loss={"center_weight": 0.003, "center_alpha": 0.5},
    ),
    "imagenet/stage1": Recipe(
        ("imagenet/base", "imagenet/stage1"), steps(1e-3, IN, 0.1), 1e-5, 75,
        "binary_activations", data={**IMAGENET, "color_jitter": True},
    ),
    "imagenet/stage2": Recipe(
        ("imagenet/base", "imagenet/stage2"), steps(2e-4, IN, 0.1), 0.0, 75, "binary",
        data={**IMAGENET, "color_jitter": False}, init_from=True,
    ),
    "imagenet/one_stage": Recipe(
        ("imagenet/base", "imagenet/one_stage"), steps(4e-3, IN, 0.1, (5, 1e-3)), 1e-5, 75,
        "binary", data={**IMAGENET, "color_jitter": False},
    ),
    **{
        f"{dataset}/reactnet18{stage}": Recipe(
            (f"{dataset}/base", f"{dataset}/reactnet18", *extra), linear(5e-4, 256), wd, 256,
            mode, bn_momentum=0.1, label_smoothing=0.0, loss=REACTNET_LOSS, net=REACTNET,
            data=CIFAR if dataset == "cifar100" else {**IMAGENET, "color_jitter": False},
            batch_size=256 if dataset == "imagenet" else None, decay_norms=False,
            init_from=bool(stage), test_resize=(256,),
        )
        for dataset in ("cifar100", "imagenet")
        for stage, extra, wd, mode in (
            ("", (), 1e-5, "binary_activations"),
            ("_stage2", (f"{dataset}/reactnet18_stage2",), 0.0, "binary"),
        )
    },
}  # fmt: skip


def data_args(files: tuple[str, ...], tmp: Path) -> list[str]:
    """Point the recipe's data at something that exists (nothing is read: no fit runs)."""
    if files[0].startswith("cifar100"):
        return ["--data.init_args.root", str(tmp), "--data.init_args.download", "false"]
    for k in range(2):  # an ImageFolder tree with two classes
        (tmp / "train" / f"c{k}").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / "train" / f"c{k}" / "0.png")
    return ["--data.init_args.root", str(tmp)]


def instantiate(recipe: Recipe, tmp: Path) -> BNNCLI:
    config = [arg for name in recipe.files for arg in ("--config", str(CONFIGS / f"{name}.yaml"))]
    out = ["--trainer.default_root_dir", str(tmp / "run"), "--model.net.init_args.width", "8"]
    return BNNCLI(args=[*config, *data_args(recipe.files, tmp), *out], run=False)


def lr_per_step(cli: BNNCLI) -> tuple[list[float], int, list[dict[str, Any]]]:
    """The lr of every scheduler step of the run, the steps per epoch, and the param groups."""
    model, epochs = cli.model, cli.trainer.max_epochs
    per_epoch = 1 if model.scheduler_interval == "epoch" else STEPS_PER_EPOCH
    with RunLength(lambda: epochs * per_epoch):
        configured = model.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    assert type(optimizer) is torch.optim.Adam
    scheduler = configured["lr_scheduler"]["scheduler"] if isinstance(configured, dict) else None
    lrs = []
    for _ in range(epochs * per_epoch):
        group_lrs = {g["lr"] for g in optimizer.param_groups}
        assert len(group_lrs) == 1, f"groups with different lrs: {group_lrs}"
        lrs.append(group_lrs.pop())
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return lrs, per_epoch, optimizer.param_groups


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_follows_its_source(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    recipe = RECIPES[name]
    cli = instantiate(recipe, tmp_path)
    model, net, data = cli.model, cli.model.net, cli.datamodule
    assert cli.trainer.max_epochs == recipe.epochs and cli.trainer.max_steps == -1
    lrs, per_epoch, groups = lr_per_step(cli)
    expected = [recipe.lr(i / per_epoch) for i in range(len(lrs))]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6, atol=1e-12)
    for group in groups:
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8  # Adam's defaults
    decayed = {id(m.weight) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    for group in groups:
        holds_weights = {id(p) for p in group["params"]} <= decayed
        want = recipe.weight_decay if holds_weights or recipe.decay_norms else 0.0
        assert group["weight_decay"] == want, (group.get("name"), group["weight_decay"])
    check_network(recipe, net)
    check_loss(recipe, model.hparams)
    check_data(recipe, data)
    assert bool(model.init_from) == recipe.init_from


def check_network(recipe: Recipe, net: nn.Module) -> None:
    assert get_modes(net) == {recipe.mode: 16}  # Bi-Real ResNet-18: 16 binary 3x3 convs
    assert all(c.kernel_size == (3, 3) for c in net.modules() if isinstance(c, BinaryConv2d))
    assert type(net.stem.conv) is nn.Conv2d and type(net.fc) is nn.Linear  # real-valued ends
    norms = {m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert norms == {recipe.bn_momentum}
    for key, value in recipe.net.items():
        assert net.init_args[key] == value, key
    assert net.init_args.get("block", "standard") == recipe.net.get("block", "standard")


def check_loss(recipe: Recipe, hparams: Any) -> None:
    assert hparams["label_smoothing"] == recipe.label_smoothing
    weights = {k: hparams[k] for k in ("kd_weight", "refinery_weight", "center_weight")}
    label = 1.0 - weights["kd_weight"] - weights["refinery_weight"]
    expected = {"kd_weight": 0.0, "refinery_weight": 0.0, "center_weight": 0.0, "label": 1.0}
    expected.update(recipe.loss)
    got = {**weights, "label": label, **{k: hparams[k] for k in recipe.loss if k in hparams}}
    assert {k: got[k] for k in expected} == pytest.approx(expected)


def check_data(recipe: Recipe, data: Any) -> None:
    for key, value in recipe.data.items():
        got = getattr(data, key)
        if key == "color_jitter":
            got = got is not None and got.enabled
        assert got == pytest.approx(value), key
    if recipe.files[0].startswith("imagenet"):  # test: resize, then center-crop 224
        assert data.image_size == 224
        assert int(224 * data.test_resize_ratio) in recipe.test_resize
    if recipe.batch_size is not None:  # the lr is that of this global batch
        assert data.batch_size == recipe.batch_size
