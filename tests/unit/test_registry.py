"""The registries behind quantizer, attention, model and network names: one error text."""

from __future__ import annotations

import pytest
from torch import nn

from bnn_lightning.attention import get_attention
from bnn_lightning.checkpoints import build_net
from bnn_lightning.models import create_model, list_models
from bnn_lightning.quantizers import QUANTIZERS, Quantizer, SteSign, get_quantizer
from bnn_lightning.registry import Registry, import_class, unknown_name


def test_lookup_by_name_by_class_path_and_the_error() -> None:
    gates = Registry("gate", {"se": nn.Sigmoid, "none": None}, base=nn.Module)
    assert gates.lookup("se") is nn.Sigmoid and gates.lookup("none") is None
    assert gates.lookup("torch.nn.ReLU") is nn.ReLU
    with pytest.raises(ValueError) as err:
        gates.lookup("torch.optim.Adam")  # importable, but not an nn.Module
    assert str(err.value) == (
        "Unknown gate 'torch.optim.Adam'; use one of none, se, or the class path of an "
        "nn.Module subclass."
    )
    plain = Registry("color", {"red": 1, "blue": 2})
    with pytest.raises(
        ValueError, match=r"^Unknown color 'torch.nn.ReLU'; use one of blue, red\.$"
    ):
        plain.lookup("torch.nn.ReLU")  # no base: class paths are not accepted
    with pytest.raises(ValueError, match=r"^Unknown color 3; use one of blue, red\.$"):
        plain.lookup(3)


def test_import_class_refuses_what_is_not_a_subclass() -> None:
    assert import_class("torch.nn.ReLU", nn.Module) is nn.ReLU
    assert import_class("math.pi", nn.Module) is None
    assert import_class("no_such_module.Thing", nn.Module) is None
    assert import_class("ReLU", nn.Module) is None


def test_register_adds_a_quantizer_usable_by_name() -> None:
    @QUANTIZERS.register("test_sign")
    class TestSign(SteSign):
        pass

    try:
        assert type(get_quantizer("test_sign")) is TestSign
        assert issubclass(TestSign, Quantizer)
    finally:
        del QUANTIZERS["test_sign"]


@pytest.mark.parametrize(
    ("lookup", "kind", "value"),
    [
        (lambda: get_quantizer("stesign"), "quantizer", "stesign"),
        (lambda: get_attention("bam", 8, 8), "attention", "bam"),
        (lambda: create_model("resnet19"), "model", "resnet19"),
        (lambda: build_net({"class_path": "bnn_lightning.Nope"}), "network class_path", None),
    ],
)
def test_the_four_lookups_share_one_error_text(lookup, kind: str, value: str | None) -> None:
    with pytest.raises(ValueError) as err:
        lookup()
    message = str(err.value)
    expected = "bnn_lightning.Nope" if value is None else value
    assert message.startswith(f"Unknown {kind} {expected!r}; use ") and message.endswith(".")
    assert "\n" not in message


def test_model_error_lists_every_model() -> None:
    with pytest.raises(ValueError) as err:
        create_model("resnet19")
    assert str(err.value) == unknown_name("model", "resnet19", list_models()).args[0]
    assert "resnet18_cifar" in str(err.value)


def test_build_net_error_names_an_example() -> None:
    with pytest.raises(ValueError) as err:
        build_net({"class_path": "torch.optim.Adam", "init_args": {}})
    assert str(err.value) == (
        "Unknown network class_path 'torch.optim.Adam'; use the class path of an nn.Module "
        "subclass such as 'bnn_lightning.BinaryResNet'."
    )
