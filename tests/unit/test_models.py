"""Binary ResNets: every registered model and config option trains; blocks follow their formulas."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnn_lightning.layers import MODES, BinaryConv2d, BinaryLinear, get_modes, set_mode
from bnn_lightning.models import (
    BasicBlock,
    BinaryResNet,
    BlockOptions,
    Bottleneck,
    create_model,
    list_models,
)
from bnn_lightning.quantizers import MagnitudeAwareSign, binary_sign

# One option changed at a time from the defaults; together they cover every value a config can
# set (quantizers: any registered name or class_path mapping goes through get_quantizer). Each one
# off its default must change the module tree or the training step (see _check_option_acts).
OPTIONS: list[dict[str, Any]] = [
    *({"downsample": v} for v in ("v1", "v2", "v3")),
    *({"attention": a} for a in ("none", "se", "eca", "cbam")),
    *({"mode": m} for m in MODES),
    {"groups": 2},
    {"groups": 4, "attention": "se"},
    {"binary_stem": True},
    {"binary_head": True},
    {"pad_value": -1.0},
    {"bn_momentum": 0.1},
    {"activation_quantizer": "approx_sign"},
    {"weight_quantizer": "ste_sign"},
    {"activation_quantizer": {"class_path": "bnn_lightning.quantizers.SwishSign"}},
]
IMAGENET_OPTIONS = [{"stem_order": "conv-bn-relu-pool"}, {"stem_order": "conv-pool-bn-relu"}]


def _input(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *((32, 32) if name.endswith("_cifar") else (64, 64)))


def _check_trains(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """timm's test_model_backward: output shape, finite, every parameter gets a gradient."""
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    assert torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _behaviour(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Train-mode logits, every parameter's gradient, and the buffers after that step."""
    model.train()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach(), *(p.grad for p in model.parameters()), *model.buffers()]


def _check_option_acts(name: str, options: dict[str, Any]) -> None:
    """An option off its default changes the module tree or, from the same weights, the step."""
    reference = create_model(name, width=8, num_classes=3)
    model = create_model(name, width=8, num_classes=3, **options)
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}
    same = shapes(model) == shapes(reference)  # the same tree of parameters and buffers
    if same:
        model.load_state_dict(reference.state_dict())
        x = _input(name)
        ours, theirs = _behaviour(model, x), _behaviour(reference, x)
        same = len(ours) == len(theirs) and all(
            a.shape == b.shape and torch.allclose(a, b) for a, b in zip(ours, theirs, strict=True)
        )
    defaults = {k: inspect.signature(BinaryResNet).parameters[k].default for k in options}
    assert same == (options == defaults), f"{options} vs the defaults {defaults}"


# Binary convs of each architecture (Bi-Real style: one shortcut per binary 3x3 conv).
BINARY_CONVS = {"resnet10": 8, "resnet18": 16, "resnet34": 32, "resnet50": 48}


@pytest.mark.parametrize("name", list_models())
def test_registered_model_trains(name: str) -> None:
    model = create_model(name, width=8, num_classes=5)
    _check_trains(model, _input(name), 5)
    assert model.forward_features(_input(name)).shape == (2, model.num_features)
    arch, _, stem = name.partition("_")
    assert sum(isinstance(m, BinaryConv2d) for m in model.modules()) == BINARY_CONVS[arch]
    kernel, stride = ((3, 3), (1, 1)) if stem == "cifar" else ((7, 7), (2, 2))
    assert (model.stem.conv.kernel_size, model.stem.conv.stride) == (kernel, stride)
    assert (model.stem.conv.out_channels, model.fc.out_features) == (8, 5)


@pytest.mark.parametrize("options", OPTIONS, ids=json.dumps)
@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar"])
def test_option_trains(name: str, options: dict[str, Any]) -> None:
    _check_trains(create_model(name, width=8, num_classes=3, **options), _input(name), 3)
    _check_option_acts(name, options)


@pytest.mark.parametrize("options", IMAGENET_OPTIONS, ids=json.dumps)
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_stem_option_trains(name: str, options: dict[str, Any]) -> None:
    _check_trains(create_model(name, width=8, num_classes=3, **options), _input(name), 3)
    _check_option_acts(name, options)


def test_block_counts_and_widths() -> None:
    # Each original basic block of ResNet-18 / 34 becomes two BasicBlocks.
    for arch, blocks in (("resnet18", 16), ("resnet34", 32)):
        model = BinaryResNet(arch, width=8)
        assert sum(isinstance(m, BasicBlock) for m in model.modules()) == blocks
        assert model.num_features == 64
    model = BinaryResNet("resnet50", width=8)
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]
    assert model.num_features == 256


@pytest.mark.parametrize(
    ("version", "order"),
    [
        ("v1", [(nn.Conv2d, 1), (nn.BatchNorm2d, None), (nn.AvgPool2d, (2, 2, 0))]),
        ("v2", [(nn.AvgPool2d, (2, 2, 0)), (nn.Conv2d, 1), (nn.BatchNorm2d, None)]),
        ("v3", [(nn.Conv2d, 1), (nn.BatchNorm2d, None), (nn.AvgPool2d, (3, 2, 1))]),
    ],
)
def test_downsample_follows_holmesshuan_order(version: str, order: list[tuple[type, Any]]) -> None:
    basic = BinaryResNet("resnet18", width=8, downsample=version).stages[1][0].downsample
    bottleneck = BinaryResNet("resnet50", width=8, downsample=version).stages[1][0].branch
    for seq in (basic, bottleneck):
        assert [type(m) for m in seq] == [cls for cls, _ in order]
        for m, (cls, arg) in zip(seq, order, strict=True):
            if cls is nn.Conv2d:
                assert m.kernel_size == (1, 1) and m.stride == (1, 1) and m.bias is None
            if cls is nn.AvgPool2d:
                assert (m.kernel_size, m.stride, m.padding) == arg


def test_bottleneck_has_the_holmesshuan_sizes() -> None:
    model = BinaryResNet("resnet50", width=64)
    first, down, plain = model.stages[0][0], model.stages[1][0], model.stages[1][1]
    for block, cin, planes in ((first, 64, 64), (down, 256, 128), (plain, 512, 128)):
        assert (block.bn1.num_features, block.bn4.num_features) == (cin, planes * 4)
        assert block.conv1.weight.shape == (planes, cin, 1, 1)
        assert block.conv2.weight.shape == (planes, planes, 3, 3)
        assert block.conv3.weight.shape == (planes * 4, planes, 1, 1)
    assert down.conv1.stride == (2, 2) and down.conv2.stride == (1, 1)
    # stride 1: Conv1x1 -> BN(eps 1e-4) -> AvgPool(3, 1, 1); stride 2: inplanes -> 2 inplanes.
    conv, bn, pool = first.branch
    assert (conv.out_channels, bn.eps, pool.kernel_size, pool.stride) == (256, 1e-4, 3, 1)
    assert down.branch[0].out_channels == 512 and down.branch[1].eps == 1e-4
    assert plain.branch is None and plain.prelu is None
    assert first.prelu.num_parameters == 256


@pytest.mark.parametrize("attention", ["none", "se", "eca", "cbam"])
@pytest.mark.parametrize(("cin", "cout", "stride"), [(8, 8, 1), (8, 16, 2)])
def test_basic_block_computes_the_holmesshuan_formula(
    attention: str, cin: int, cout: int, stride: int
) -> None:
    block = BasicBlock(cin, cout, stride, BlockOptions(attention=attention)).eval()
    nn.init.uniform_(block.prelu.weight, 0.1, 0.5)
    x = torch.randn(2, cin, 6, 6)
    w = block.conv.weight
    out = F.conv2d(
        binary_sign(block.bn(x)), MagnitudeAwareSign.scale(w) * binary_sign(w), None, stride, 1
    )
    if block.gate is not None:
        out = out * block.gate(x)
    shortcut = x if block.downsample is None else block.downsample(x)
    torch.testing.assert_close(block(x), F.prelu(out + shortcut, block.prelu.weight))


def _bn(m: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm from its definition."""
    shape = (1, -1, 1, 1)
    scale = m.weight.view(shape) / (m.running_var.view(shape) + m.eps).sqrt()
    return (x - m.running_mean.view(shape)) * scale + m.bias.view(shape)


def _binary_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(sign(x), mean|w| sign(w))`` with the conv's stride, padding and groups."""
    w = MagnitudeAwareSign.scale(conv.weight) * binary_sign(conv.weight)
    return F.conv2d(binary_sign(x), w, None, conv.stride, conv.padding, 1, conv.groups)


@pytest.mark.parametrize(
    ("inplanes", "planes", "stride", "has_branch", "options"),
    [
        (16, 4, 1, True, {}),
        (16, 4, 1, False, {}),
        (8, 4, 2, True, {}),
        (8, 4, 2, True, {"downsample": "v2", "groups": 2, "attention": "se"}),
    ],
)
def test_bottleneck_computes_the_holmesshuan_formula(
    inplanes: int, planes: int, stride: int, has_branch: bool, options: dict[str, Any]
) -> None:
    block = Bottleneck(inplanes, planes, stride, has_branch, BlockOptions(**options)).eval()
    for m in block.modules():  # BatchNorms and PReLU away from the identity
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.running_mean, 0, 0.3), nn.init.uniform_(m.running_var, 0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5), nn.init.normal_(m.bias, 0, 0.3)
        if isinstance(m, nn.PReLU):
            nn.init.uniform_(m.weight, 0.1, 0.5)
    x = torch.randn(2, inplanes, 6, 6)
    add = _binary_conv(block.conv1, _bn(block.bn1, x))
    out = _binary_conv(block.conv2, _bn(block.bn2, add))
    assert block.conv2.groups == options.get("groups", 1)
    if block.gate is not None:
        out = out * block.gate(add)
    out = _bn(block.bn4, _binary_conv(block.conv3, _bn(block.bn3, out + add)))
    if not has_branch:
        torch.testing.assert_close(block(x), out + x)
        return
    conv, bn = (m for m in block.branch if not isinstance(m, nn.AvgPool2d))
    if stride == 1:  # Conv1x1 -> BN(eps 1e-4) -> AvgPool(3, 1, 1)
        shortcut = F.avg_pool2d(_bn(bn, F.conv2d(x, conv.weight)), 3, 1, 1)
    elif options.get("downsample") == "v2":  # AvgPool(2, 2) -> Conv1x1 -> BN
        shortcut = _bn(bn, F.conv2d(F.avg_pool2d(x, 2, 2), conv.weight))
    else:  # v1: Conv1x1 -> BN -> AvgPool(2, 2)
        shortcut = F.avg_pool2d(_bn(bn, F.conv2d(x, conv.weight)), 2, 2)
    assert conv.out_channels == 4 * planes and bn.eps == 1e-4
    torch.testing.assert_close(block(x), F.prelu(out + shortcut, block.prelu.weight))


class _FixedGate(nn.Module):
    def __init__(self, gate: torch.Tensor) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate


def test_gate_scales_each_output_channel() -> None:
    block = BasicBlock(4, 4, 1, BlockOptions(attention="se")).eval()
    nn.init.ones_(block.prelu.weight)  # PReLU with slope 1 is the identity
    x = torch.randn(1, 4, 5, 5)
    ungated = block.conv(block.bn(x))
    g = torch.tensor([0.1, 0.5, 0.9, 0.3]).view(1, 4, 1, 1)
    block.gate = _FixedGate(g)
    torch.testing.assert_close(block(x) - x, ungated * g)


def test_stem_orders_and_float_ends_by_default() -> None:
    reordered = BinaryResNet("resnet18", width=8, stem_order="conv-pool-bn-relu")
    assert list(reordered.stem._modules) == ["conv", "pool", "bn", "relu"]
    plain = BinaryResNet("resnet18", width=8)
    assert list(plain.stem._modules) == ["conv", "bn", "relu", "pool"]
    assert plain.stem.conv.kernel_size == (7, 7) and plain.stem.conv.stride == (2, 2)
    cifar = BinaryResNet("resnet18", width=8, stem="cifar")
    assert list(cifar.stem._modules) == ["conv", "bn", "relu"]
    assert cifar.stem.conv.kernel_size == (3, 3) and cifar.stem.conv.stride == (1, 1)
    assert type(plain.stem.conv) is nn.Conv2d and type(plain.fc) is nn.Linear
    binary = BinaryResNet("resnet18", width=8, binary_stem=True, binary_head=True)
    assert isinstance(binary.stem.conv, BinaryConv2d) and isinstance(binary.fc, BinaryLinear)
    assert get_modes(binary) == {"binary": 18}


def test_options_reach_every_layer() -> None:
    model = BinaryResNet("resnet50", width=8, bn_momentum=0.3, pad_value=-1.0, groups=2)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {bn.momentum for bn in bns} == {0.3}
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert {c.pad_value for c in convs} == {-1.0}
    assert {c.groups for c in convs if c.kernel_size == (3, 3)} == {2}
    assert {c.groups for c in convs if c.kernel_size == (1, 1)} == {1}
    assert BinaryResNet(width=8).stages[0][0].bn.momentum == 0.2  # documented default


@pytest.mark.parametrize("mode", MODES)
def test_mode_sets_quantizers_and_keeps_state_dict_keys(mode: str) -> None:
    model = BinaryResNet("resnet18", width=8, mode=mode)
    assert get_modes(model) == {mode: 16}
    reference = BinaryResNet("resnet18", width=8)
    assert list(model.state_dict()) == list(reference.state_dict())
    set_mode(reference, mode)
    assert get_modes(reference) == {mode: 16}
    assert list(model.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize(
    "options", [{}, {"attention": "cbam", "downsample": "v3", "mode": "binary_activations"}]
)
@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50"])
def test_init_args_rebuild_the_same_model(name: str, options: dict[str, Any]) -> None:
    model = create_model(name, width=8, num_classes=4, **options).eval()
    json.dumps(model.init_args)  # plain data, so export can store it next to the weights
    rebuilt = BinaryResNet(**model.init_args).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = _input(name, 1)
    torch.testing.assert_close(rebuilt(x), model(x))
    assert rebuilt.init_args == model.init_args


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet101"}, r"arch 'resnet101'.*resnet18, resnet34, resnet50"),
        ({"attention": "bam"}, r"attention 'bam'.*cbam, eca, none, se"),
        ({"downsample": "v4"}, r"downsample 'v4'.*v1, v2, v3"),
        ({"stem": "tiny"}, r"stem 'tiny'.*cifar, imagenet"),
        ({"stem_order": "bn-conv"}, r"conv-bn-relu-pool, conv-pool-bn-relu"),
        ({"mode": "ternary"}, r"mode 'ternary'.*float, binary_activations"),
        ({"groups": 3}, r"groups=3 must divide width=8"),
    ],
)
def test_bad_options_raise_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BinaryResNet(**{"width": 8, **kwargs})


def test_registry() -> None:
    assert set(list_models()) >= {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet18_cifar",
        "resnet34_cifar",
        "resnet50_cifar",
    }
    model = create_model("resnet34_cifar", width=8, stem="imagenet")
    assert model.init_args["arch"] == "resnet34" and model.init_args["stem"] == "imagenet"
    with pytest.raises(ValueError, match=r"'resnet19'.*resnet18, resnet18_cifar"):
        create_model("resnet19")
