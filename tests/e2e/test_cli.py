"""The ``bnn`` CLI in-process: help, num_classes links, checkpoints and resume, summary, export."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from fakes import CONFIGS, ROOT, allow_fake_cifar, tiny_data_args, tiny_run_args

from bnn_lightning import cli as cli_module
from bnn_lightning.checkpoints import net_from_checkpoint
from bnn_lightning.cli import BNNCLI, main
from bnn_lightning.data import CIFAR10DataModule
from bnn_lightning.export import load_packed, read_manifest

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

QUICKSTART = CONFIGS / "cifar10" / "quickstart.yaml"
DATA = "bnn_lightning.ImageFolderDataModule"


def quick_args(tmp: Path) -> list[str]:
    """The quickstart config on a tiny fake tree, a width-8 net, CSV logs under ``tmp``."""
    return ["--config", str(QUICKSTART), *tiny_data_args(DATA, tmp), *tiny_run_args(tmp)]


def two_steps(epochs: int) -> list[str]:
    return [
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.max_epochs", str(epochs), "--trainer.num_sanity_val_steps", "0",
    ]  # fmt: skip


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "predict", "summary", "export"):
        assert subcommand in out


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bnn_lightning", "summary", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--image_size" in result.stdout


@pytest.mark.parametrize("dataset", ["folder", "cifar100"])
def test_num_classes_is_linked_from_the_datamodule(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_fake_cifar(monkeypatch)
    if dataset == "folder":
        args = quick_args(tmp_path)
    else:
        base = CONFIGS / "cifar100" / "base.yaml"
        data = tiny_data_args("bnn_lightning.CIFAR100DataModule", tmp_path)
        args = ["--config", str(base), *data, *tiny_run_args(tmp_path)]
    cli = BNNCLI(args=[*args, "--channels_last", "true"], run=False)
    expected = 10 if dataset == "folder" else 100
    assert cli.datamodule.num_classes == expected
    assert cli.model.num_classes == expected
    assert cli.model.net.fc.out_features == expected
    assert cli.model.net.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_quickstart_falls_back_to_the_torchvision_download_without_bnn_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BNN_DATA_DIR", raising=False)
    args = ["--config", str(QUICKSTART), *tiny_run_args(tmp_path, logger_dir=False)]
    cli = BNNCLI(args=args, run=False)  # the config as it is, only the network narrower
    assert isinstance(cli.datamodule, CIFAR10DataModule)
    assert cli.datamodule.download and cli.datamodule.val_size == 5000
    assert cli.model.net.fc.out_features == 10


def test_auto_threads_use_every_idle_core_after_a_busy_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load average still counts a finished ``pip install``; the CPU sample shows idle cores."""
    clock = [100.0]
    monkeypatch.setattr(psutil, "cpu_times", lambda: _idle_cpu_times(clock[0]))
    monkeypatch.setattr(time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 0.7, 0.3))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    chosen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    BNNCLI(args=[*quick_args(tmp_path), "--threads", "auto"], run=False)
    assert chosen == [2]


def _idle_cpu_times(clock: float) -> SimpleNamespace:
    """``psutil.cpu_times()`` of an idle 2-core machine ``clock`` seconds after boot."""
    fields = {"user": 0.01 * clock, "system": 0.01 * clock, "idle": 1.98 * clock}
    return SimpleNamespace(_asdict=lambda: fields)


@pytest.mark.parametrize(("given", "applied"), [([], 1), (["--keep_cpu_memory", "false"], 0)])
def test_keep_cpu_memory_is_on_by_default_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: list[str], applied: int
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(cli_module, "keep_freed_memory", lambda: calls.append(None) or True)
    BNNCLI(args=[*quick_args(tmp_path), *given], run=False)
    assert len(calls) == applied


def test_threads_switch_sets_torch_threads(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        BNNCLI(args=[*quick_args(tmp_path), "--threads", "1"], run=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_number_survives_lightnings_ddp_launchers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's DDP launchers set torch threads to cores / processes unless OMP_NUM_THREADS
    is set (``_set_num_threads_if_needed``, called at launch, after the CLI's switches)."""
    from lightning.fabric.utilities import distributed

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(distributed, "_num_cpus_available", lambda: 8)
    before = torch.get_num_threads()
    try:
        BNNCLI(args=[*quick_args(tmp_path), "--threads", "1"], run=False)
        distributed._set_num_threads_if_needed(num_processes=2)  # what the launchers call
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def read_csv_epochs(folder: Path) -> set[int]:
    """Epochs that have a ``val/acc_top1`` row in the CSV logs under ``folder``."""
    (metrics,) = folder.rglob("metrics.csv")
    with metrics.open() as f:
        return {int(row["epoch"]) for row in csv.DictReader(f) if row.get("val/acc_top1")}


def test_fit_keeps_best_and_last_and_resumes_from_last(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Resuming with more epochs needs a schedule that does not depend on the run's length.

    (The quickstart's one-cycle schedule spans the run, so a longer resume of it is refused.)
    """
    first, second = tmp_path / "first", tmp_path / "second"
    step_decay = tmp_path / "step_decay.yaml"
    step_decay.write_text(
        "model:\n  scheduler_interval: epoch\n  lr_scheduler:\n"
        "    class_path: bnn_lightning.WarmupMultiStepLR\n"
        "    init_args: {milestones: [1], gamma: 0.1}\n"
    )
    quick = [*quick_args(tmp_path), "--config", str(step_decay)]
    main(["fit", *quick, *two_steps(1)])
    out = capsys.readouterr().out
    assert "Final validation: val/acc_top1=" in out and "binary layers {'binary': 8}" in out
    phase = r"[0-9ms]+"  # 14s, 1m02s
    assert re.search(
        rf"wall time {phase} \(start-up {phase}, data {phase}, training {phase}, "
        rf"validation {phase}, other {phase}\)\.",
        out,
    ), out
    ckpt_dir = tmp_path / "run" / "checkpoints"
    best = list(ckpt_dir.glob("best-epoch000*.ckpt"))
    assert len(best) == 1 and (ckpt_dir / "last.ckpt").is_file()
    state = torch.load(best[0], weights_only=True, map_location="cpu")
    callbacks = {k.partition("{")[0]: v for k, v in state["callbacks"].items()}
    assert callbacks["ModelCheckpoint"]["monitor"] == "val/acc_top1"  # the best one
    assert callbacks["LastCheckpoint"]["monitor"] is None  # last.ckpt's, whatever the metric
    assert state["global_step"] == 2
    (ckpt_dir.parent / "csv").rename(first)

    main(["fit", *quick, *two_steps(2), "--ckpt_path", "last"])
    (ckpt_dir.parent / "csv").rename(second)
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 4
    assert read_csv_epochs(first) == {0} and read_csv_epochs(second) == {1}

    main(["fit", *quick, *two_steps(1)])  # a fresh rerun rewrites last.ckpt
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not list(ckpt_dir.glob("last-v*.ckpt"))


def test_quickstart_as_shipped_compiles_and_validates_six_views(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compile: true`` and ``tta: flip_shift`` of the quickstart: the net is compiled in place
    (its checkpoint keeps the plain keys), the final line names the views."""
    compiled: list[torch.nn.Module] = []
    plain_compile = torch.nn.Module.compile

    def record(module: torch.nn.Module, *args: object, **kwargs: object) -> None:
        compiled.append(module)
        plain_compile(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", record)
    main(["fit", *quick_args(tmp_path), *two_steps(1), "--compile", "true"])
    out = capsys.readouterr().out
    assert [type(m).__name__ for m in compiled] == ["BinaryResNet"]
    assert "; test-time augmentation flip_shift; wall time" in out, out[-500:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    net = net_from_checkpoint(ckpt)  # strict: no ``_orig_mod.`` prefixes
    assert type(net).__name__ == "BinaryResNet"
    assert "tta" not in torch.load(ckpt, weights_only=True)["hyper_parameters"]
    for tta in ("none", "flip_shift"):  # the command's choice, not the checkpoint's
        args = [*quick_args(tmp_path), "--ckpt_path", str(ckpt), "--model.tta", tta]
        cli = BNNCLI(args=["validate", *args, "--trainer.limit_val_batches", "1"])
        assert cli.model.tta == tta


def test_each_model_value_a_checkpoint_replaces_is_named_in_a_warning(tmp_path: Path) -> None:
    """LightningCLI restores a ``--ckpt_path`` file's hyperparameters over ``--model.*`` values;
    each value replaced is named in one warning, and the same values warn nothing."""
    main(["fit", *quick_args(tmp_path), *two_steps(1)])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = [*quick_args(tmp_path), "--ckpt_path", str(ckpt), "--trainer.limit_val_batches", "1"]
    with pytest.warns(UserWarning, match="saved hyperparameters replace") as caught:
        cli = BNNCLI(args=["validate", *args, "--model.label_smoothing", "0.3"])
    replaced = [str(w.message) for w in caught if "hyperparameters replace" in str(w.message)]
    assert len(replaced) == 1 and "model.label_smoothing=0.3 -> 0.1" in replaced[0], replaced
    assert cli.model.criterion.label_smoothing == 0.1  # the checkpoint's value is used
    with warnings.catch_warnings(record=True) as caught_again:
        warnings.simplefilter("always")
        BNNCLI(args=["validate", *args])
    assert not [w for w in caught_again if "hyperparameters replace" in str(w.message)]


def test_compile_without_a_cpp_compiler_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor import cpp_builder, exc

    def missing() -> str:
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(ValueError, match=r"^compile: true needs a C\+\+ compiler on the CPU "):
        BNNCLI(args=[*quick_args(tmp_path), "--compile", "true"], run=False)
    BNNCLI(args=quick_args(tmp_path), run=False)  # --compile false: no compiler needed


def test_summary_and_export_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["summary", *quick_args(tmp_path)])
    table = capsys.readouterr().out
    assert "BOPs" in table and "FLOPs" in table

    main(["fit", *quick_args(tmp_path), *two_steps(1)])
    main(["export", *quick_args(tmp_path), "--ckpt_path", "last"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    packed = load_packed(ckpt.with_suffix(".bnn"))
    net = net_from_checkpoint(ckpt).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(packed(x), net(x))


def test_export_best_is_the_checkpoint_the_run_recorded_as_best(tmp_path: Path) -> None:
    """With ``save_top_k: -1`` every epoch is kept; the newest file is not the best one."""
    main(["fit", *quick_args(tmp_path), *two_steps(3), "--checkpoint.save_top_k", "-1"])
    folder = tmp_path / "run" / "checkpoints"
    states = torch.load(folder / "last.ckpt", weights_only=True)["callbacks"]
    (best,) = [Path(s["best_model_path"]) for s in states.values() if s["monitor"]]
    others = sorted(set(folder.glob("best-*.ckpt")) - {best})
    assert len(others) == 2
    for i, other in enumerate(others):  # newer than the best one (as after copying the folder)
        os.utime(other, (time.time() + 10 + i, time.time() + 10 + i))
    main(["export", *quick_args(tmp_path), "--ckpt_path", "best"])
    assert read_manifest(best.with_suffix(".bnn"))["extras"]["checkpoint"] == best.name
    assert not any(other.with_suffix(".bnn").exists() for other in others)
