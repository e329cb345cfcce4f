"""``precision: auto``: bf16 autocast only where the device computes bf16 natively."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator

from bnn_lightning import precision as P
from bnn_lightning.cli import BNNCLI, BNNTrainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-bf16"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """A CPU with (AVX-512 BF16, AMX) or without (AVX2) native bf16, whatever this one has."""
    monkeypatch.setattr(P, "cpu_bf16", lambda: request.param)
    return request.param


def test_device_type_of_each_accelerator_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert [P.device_type(a) for a in ("cpu", "CPU", CPUAccelerator(), "auto", None)] == ["cpu"] * 5
    assert [P.device_type(a) for a in ("cuda", "gpu", "mps", "tpu")] == ["cuda", *["other"] * 3]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert P.device_type("auto") == P.device_type("gpu") == "cuda"


def test_auto_is_bf16_only_with_native_bf16(native: bool) -> None:
    assert P.native_bf16("cpu") is native
    assert isinstance(torch.ops.mkldnn._is_mkldnn_bf16_supported(), bool)  # the real probe runs
    expected = "bf16-mixed" if native else "32-true"
    assert P.auto_precision("cpu") == expected
    chosen, line = P.resolve_precision("auto", "cpu")
    assert chosen == expected
    reason = "native bf16" if native else "no native bf16 on this cpu"
    assert line == f"precision: auto -> {expected} ({reason})"
    assert P.auto_precision("other") == "32-true"


def test_auto_on_cuda_is_fp16_mixed_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, expected in ((True, "bf16-mixed"), (False, "16-mixed")):
        supported = functools.partial(lambda flag, including_emulation=True: flag, bf16)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
        assert P.resolve_precision("auto", "cuda")[0] == expected


def test_explicit_precision_is_kept_and_bf16_on_a_cpu_without_it_warns(native: bool) -> None:
    assert P.resolve_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)
    assert P.resolve_precision(None, "cpu") == (None, None)  # Lightning's default
    assert P.slow_bf16_warning("32-true", "cpu") is None
    assert P.slow_bf16_warning("auto", "cpu") is None
    line = P.slow_bf16_warning("bf16-mixed", "cpu")
    if native:
        assert line is None
    else:
        assert line is not None and "\n" not in line
        assert line.startswith("precision bf16-mixed on a CPU without native bf16 (")
        assert line.endswith("set precision: auto or 32-true.")


def test_trainer_resolves_auto(native: bool, tmp_path: Path) -> None:
    trainer = BNNTrainer(
        precision="auto",
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
    )
    assert trainer.precision == ("bf16-mixed" if native else "32-true")
    plain = BNNTrainer(precision="16-true", accelerator="cpu", logger=False)
    assert plain.precision == "16-true"  # an explicit value is Lightning's


def test_trainer_warns_once_for_bf16_on_a_cpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "cpu_bf16", lambda: False)
    with pytest.warns(UserWarning, match="precision bf16-mixed on a CPU without native bf16"):
        trainer = BNNTrainer(precision="bf16-mixed", accelerator="cpu", logger=False)
    assert trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("config", ["cifar10/quickstart.yaml", "cifar100/base.yaml"])
def test_shipped_configs_train_in_fp32_on_a_cpu_without_bf16(
    config: str, native: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart on an AVX2-only CPU: bf16 convolutions there run on oneDNN's reference code
    (a 70 s binary ResNet-18 step against 8.6 s in fp32), so ``make train`` would not end."""
    monkeypatch.delenv("BNN_DATA_DIR", raising=False)  # the quickstart's torchvision fallback
    args = ["--config", str(CONFIGS / config), "--trainer.accelerator", "cpu"]
    if config.startswith("cifar100"):
        args += ["--config", str(CONFIGS / "cifar100" / "stage1.yaml")]
    args += ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    cli = BNNCLI(args=args, run=False)
    assert cli.config.trainer.precision == "auto"  # the saved config says auto
    assert cli.trainer.precision == ("bf16-mixed" if native else "32-true")
