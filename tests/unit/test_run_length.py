"""Schedules take the run's length from the trainer: the quickstart's one-cycle for any number of
epochs and batch size, a mid-run resume on the same curve, a stage-2 schedule over what is left."""

from __future__ import annotations

import functools
import warnings
from itertools import pairwise
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.callbacks import StageHandoff
from bnn_lightning.module import BNNClassifier
from bnn_lightning.schedules import LinearDecayLR, OneCycleLR, WarmupMultiStepLR

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "cifar10" / "quickstart.yaml"


class TinyNet(nn.Module):
    """A linear classifier on 12 features (what is tested is the schedule, not the net)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 10)
        self.num_classes = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Crash(RuntimeError):
    """Stands for a killed process."""


class LrRecorder(Callback):
    """The lr each optimizer step uses, by global step; raises at ``crash_at`` (a crash)."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.lrs: dict[int, float] = {}
        self.crash_at = crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.crash_at:
            raise Crash(f"crash at step {self.crash_at}")
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def loader(batch_size: int, n: int = 160) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 12, generator=gen), torch.randint(0, 10, (n,)))
    return DataLoader(data, batch_size=batch_size)


def fit(module: BNNClassifier, callbacks: list[Callback], tmp_path: Path, **kwargs) -> L.Trainer:
    ckpt_path = kwargs.pop("ckpt_path", None)
    batch_size = kwargs.pop("batch_size", 16)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
        callbacks=callbacks, **kwargs,
    )  # fmt: skip
    trainer.fit(module, loader(batch_size), ckpt_path=ckpt_path)
    return trainer


def quickstart_model() -> tuple[dict, BNNClassifier]:
    """The quickstart's optimizer and schedule exactly as its YAML states them, on a tiny net."""
    model = yaml.safe_load(QUICKSTART.read_text())["model"]
    parser = ArgumentParser()
    parser.add_argument("--optimizer", type=OptimizerCallable)
    parser.add_argument("--lr_scheduler", type=LRSchedulerCallable)
    config = parser.parse_object({k: model[k] for k in ("optimizer", "lr_scheduler")})
    init = parser.instantiate(config)
    module = BNNClassifier(
        TinyNet(), optimizer=init.optimizer, lr_scheduler=init.lr_scheduler,
        scheduler_interval=model["scheduler_interval"],
    )  # fmt: skip
    return model, module


@pytest.mark.parametrize("batch_size", [8, 20])
@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_quickstart_schedule_spans_any_run(epochs: int, batch_size: int, tmp_path: Path) -> None:
    """Warm-up for 15% of the run to the peak, then down to the final lr at the last step."""
    model, module = quickstart_model()
    recorder = LrRecorder()
    trainer = fit(module, [recorder], tmp_path, max_epochs=epochs, batch_size=batch_size)
    steps = epochs * 160 // batch_size
    lrs = [recorder.lrs[s] for s in range(steps)]
    assert len(recorder.lrs) == steps == trainer.global_step
    peak = model["optimizer"]["init_args"]["lr"]
    args = model["lr_scheduler"]["init_args"]
    top = round(args["pct_start"] * (steps - 1))
    assert lrs[0] == pytest.approx(peak / args["div_factor"])
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == top
    assert lrs[-1] == pytest.approx(peak / args["div_factor"] / args["final_div_factor"])
    assert all(a < b for a, b in pairwise(lrs[: top + 1]))
    assert all(a > b for a, b in pairwise(lrs[top:]))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lrs[-1])  # held after


def test_schedule_counts_accumulation_and_limits(tmp_path: Path) -> None:
    """2 epochs of 7 batches (limit_train_batches), 2 batches a step: 4 steps an epoch."""
    module = BNNClassifier(TinyNet(), lr_scheduler=LinearDecayLR, scheduler_interval="step")
    recorder = LrRecorder()
    fit(module, [recorder], tmp_path, max_epochs=2, limit_train_batches=7,
        accumulate_grad_batches=2)  # fmt: skip
    assert module.lr_schedulers().total_steps == 8  # type: ignore[union-attr]
    assert module.trainer.global_step == 8


def test_epoch_interval_linear_decay_follows_reactnet(tmp_path: Path) -> None:
    """``lr * (1 - epoch / epochs)`` every epoch, the last epoch at ``lr / epochs``."""
    module = BNNClassifier(TinyNet(), lr_scheduler=LinearDecayLR, scheduler_interval="epoch")
    recorder = LrRecorder()
    fit(module, [recorder], tmp_path, max_epochs=4, batch_size=80)
    lrs = [recorder.lrs[2 * epoch] for epoch in range(4)]
    assert lrs == pytest.approx([1e-3 * (1 - epoch / 4) for epoch in range(4)])


def test_mid_run_resume_continues_on_the_same_curve(tmp_path: Path) -> None:
    """Killed at step 15 of 30 (mid-epoch), resumed from ``last.ckpt``: the same lr every step."""
    reference = LrRecorder()
    _, module = quickstart_model()
    fit(module, [reference], tmp_path / "reference", max_epochs=3)
    crashed = LrRecorder(crash_at=15)
    ckpt = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    _, module = quickstart_model()
    with pytest.raises(Crash):
        fit(module, [crashed, ckpt], tmp_path, max_epochs=3)
    resumed = LrRecorder()
    _, module = quickstart_model()
    fit(module, [resumed], tmp_path, max_epochs=3, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert sorted(crashed.lrs) == list(range(15)) and sorted(resumed.lrs) == list(range(15, 30))
    assert {**crashed.lrs, **resumed.lrs} == pytest.approx(reference.lrs, rel=1e-12)
    lrs = [resumed.lrs[s] for s in range(15, 30)]  # ... and that curve spans the run
    assert lrs[-1] == pytest.approx(4e-3 / 1e4) and lrs == sorted(lrs, reverse=True)


def test_resume_with_another_length_is_refused(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(tmp_path / "ckpt", save_last=True, save_top_k=0)
    _, module = quickstart_model()
    fit(module, [ckpt], tmp_path, max_epochs=1)
    _, module = quickstart_model()
    with pytest.raises(ValueError, match="spans 10 optimizer steps but this run has 30"):
        fit(module, [], tmp_path, max_epochs=3, ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def test_stage2_schedule_spans_what_is_left(tmp_path: Path) -> None:
    """A StageHandoff at epoch 1 of 3 restarts the one-cycle over the 20 steps left."""
    module = BNNClassifier(TinyNet(), lr_scheduler=OneCycleLR, scheduler_interval="step")
    handoff = StageHandoff(epoch=1, lr=5e-4)
    recorder = LrRecorder()
    fit(module, [handoff, recorder], tmp_path, max_epochs=3)
    stage2 = [recorder.lrs[s] for s in range(10, 30)]
    assert max(stage2) == pytest.approx(5e-4) and stage2.index(max(stage2)) == round(0.3 * 19)
    assert stage2[-1] == pytest.approx(5e-4 / 25 / 1e4)


@pytest.mark.parametrize(
    ("schedule", "late"),
    [
        (
            functools.partial(WarmupMultiStepLR, milestones=[1, 150, 250], warmup_epochs=0),
            "[150, 250]",
        ),
        (functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[1, 2]), "[2]"),
        (functools.partial(WarmupMultiStepLR, milestones=[1]), None),
    ],
)
def test_step_decay_milestones_past_the_run_warn(
    schedule: functools.partial, late: str | None, tmp_path: Path
) -> None:
    """A recipe's milestones on a shorter run (2 epochs: decays at epoch 0 or 1 only) are named."""
    module = BNNClassifier(TinyNet(), lr_scheduler=schedule, scheduler_interval="epoch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(module, [], tmp_path, max_epochs=2)
    found = [str(w.message) for w in caught if "lr milestones" in str(w.message)]
    if late is None:
        assert not found
    else:
        assert found == [
            f"lr milestones {late} are at or past the end of the run (2 epochs): the lr never "
            "decays there; scale the milestones to the run's length, or lengthen the run."
        ]
