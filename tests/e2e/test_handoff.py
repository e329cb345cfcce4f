"""Stage-1 -> stage-2 handoff with a real Trainer: (a) ``init_from`` and (b) ``StageHandoff``;
step-interval schedules, checkpoint reload and the diagnostics callbacks in a real fit."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.callbacks import BNNDiagnostics, StageHandoff, WeightClip
from bnn_lightning.layers import get_modes
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier
from bnn_lightning.schedules import WarmupCosineLR


def loader() -> DataLoader:
    """4 batches of 16 random 8x8 images (the mechanics, not the learning, are tested here)."""
    data = TensorDataset(torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,)))
    return DataLoader(data, batch_size=16)


def net(mode: str = "binary_activations", width: int = 8) -> BinaryResNet:
    return BinaryResNet("resnet18", num_classes=10, stem="cifar", width=width, mode=mode)


def trainer(tmp_path: Path, callbacks: list[L.Callback], **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    return L.Trainer(
        accelerator="cpu", devices=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=1, default_root_dir=tmp_path, callbacks=callbacks, **kwargs,
    )  # fmt: skip


def logger(tmp_path: Path) -> CSVLogger:
    """A logger for LearningRateMonitor, which refuses to run without one."""
    return CSVLogger(tmp_path, name="csv")


def weights(module: BNNClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.net.state_dict().items()}


class Probe(L.Callback):
    """Records weights and optimizer at the end of each epoch and the start of the next."""

    def __init__(self) -> None:
        self.end: dict[int, dict] = {}
        self.start: dict[int, dict] = {}
        self.logged: dict[int, dict[str, float]] = {}

    def _snapshot(self, trainer: L.Trainer, module: BNNClassifier) -> dict:
        (optimizer,) = trainer.optimizers
        return {"weights": weights(module), "optimizer": optimizer, "modes": get_modes(module.net)}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        snapshot = self._snapshot(trainer, pl_module)
        snapshot["state"] = len(snapshot["optimizer"].state)
        self.start[trainer.current_epoch] = snapshot

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged[trainer.current_epoch] = {
            k: float(v) for k, v in trainer.callback_metrics.items()
        }

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end[trainer.current_epoch] = self._snapshot(trainer, pl_module)


def stage1_module() -> BNNClassifier:
    return BNNClassifier(net(), optimizer=partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-5))


def distilling_handoff(epoch: int) -> StageHandoff:
    """Stage 2 at ``epoch`` with lr 2e-4, no weight decay, the stage-1 net as KD teacher."""
    return StageHandoff(epoch, lr=2e-4, teacher_from_stage1=True, loss_weights={"kd_weight": 0.5})


def test_stage_handoff_in_one_fit(tmp_path):
    """(b): same weights, binary weights on, fresh optimizer at the stage-2 lr, stage-1 teacher."""
    module, probe = stage1_module(), Probe()
    monitor = LearningRateMonitor()  # reads the rebuilt optimizer: no scheduler, so lr-Adam/<group>
    run = trainer(
        tmp_path, [distilling_handoff(2), monitor, probe], max_epochs=3, logger=logger(tmp_path)
    )
    run.fit(module, loader(), loader())
    before, after = probe.end[1], probe.start[2]
    for key, value in before["weights"].items():
        assert torch.equal(after["weights"][key], value), key
    assert set(before["modes"]) == {"binary_activations"} and set(after["modes"]) == {"binary"}
    assert after["optimizer"] is not before["optimizer"] and after["state"] == 0
    assert {(g["lr"], g["weight_decay"]) for g in after["optimizer"].param_groups} == {(2e-4, 0)}
    assert probe.start[1]["optimizer"] is probe.start[0]["optimizer"]
    assert set(get_modes(module.teacher)) == {"binary_activations"}
    for key, value in before["weights"].items():
        assert torch.equal(module.teacher.state_dict()[key], value), key
    assert "train/loss_kd" not in probe.logged[1]
    assert math.isfinite(probe.logged[2]["train/loss_kd"])
    assert probe.logged[1]["lr-Adam/decay"] == pytest.approx(1e-3)
    assert probe.logged[2]["lr-Adam/decay"] == pytest.approx(2e-4)


def test_stage_handoff_survives_resume(tmp_path):
    """A stage-2 checkpoint resumes as stage 2: modes, optimizer groups and state, teacher."""
    module = stage1_module()
    run = trainer(tmp_path, [distilling_handoff(1)], max_epochs=2)
    run.fit(module, loader(), loader())
    path = tmp_path / "stage2.ckpt"
    run.save_checkpoint(path)
    teacher = {k: v.clone() for k, v in module.teacher.state_dict().items()}

    resumed, probe = stage1_module(), Probe()
    resume = trainer(tmp_path, [distilling_handoff(1), probe], max_epochs=3)
    resume.fit(resumed, loader(), loader(), ckpt_path=path)
    start = probe.start[2]
    assert set(start["modes"]) == {"binary"} and start["state"] > 0
    assert {(g["lr"], g["weight_decay"]) for g in start["optimizer"].param_groups} == {(2e-4, 0)}
    assert set(get_modes(resumed.teacher)) == {"binary_activations"}
    for key, value in teacher.items():
        assert torch.equal(resumed.teacher.state_dict()[key], value), key
    assert math.isfinite(probe.logged[2]["train/loss_kd"])


def test_init_from_starts_stage2_from_stage1(tmp_path):
    """(a): ``init_from`` loads the stage-1 weights strictly into a binary net, fresh optimizer."""
    stage1 = stage1_module()
    run1 = trainer(tmp_path, [], max_epochs=1)
    run1.fit(stage1, loader(), loader())
    path = tmp_path / "stage1.ckpt"
    run1.save_checkpoint(path)

    adam = partial(torch.optim.Adam, lr=2e-4, weight_decay=0.0)
    stage2, probe = BNNClassifier(net("binary"), optimizer=adam, init_from=str(path)), Probe()
    trainer(tmp_path, [probe], max_epochs=1).fit(stage2, loader(), loader())
    start = probe.start[0]
    for key, value in weights(stage1).items():
        assert torch.equal(start["weights"][key], value), key
    assert set(start["modes"]) == {"binary"} and start["state"] == 0
    assert {(g["lr"], g["weight_decay"]) for g in start["optimizer"].param_groups} == {(2e-4, 0)}


def test_init_from_another_architecture_stops_with_the_file_name(tmp_path):
    path = tmp_path / "stage1.ckpt"
    run1 = trainer(tmp_path, [], max_steps=1)
    run1.fit(stage1_module(), loader(), loader())
    run1.save_checkpoint(path)
    wide = BNNClassifier(net("binary", width=16), init_from=str(path))
    with pytest.raises(ValueError, match=str(path)) as err:
        trainer(tmp_path, [], max_steps=1).fit(wide, loader(), loader())
    assert "width" in str(err.value) or "shape" in str(err.value)


def test_checkpoint_reloads_to_the_same_logits(tmp_path):
    module = stage1_module()
    run = trainer(tmp_path, [WeightClip(), BNNDiagnostics(every_n_steps=2)], max_steps=4)
    run.fit(module, loader(), loader())
    path = tmp_path / "run.ckpt"
    run.save_checkpoint(path)
    reloaded = BNNClassifier.load_from_checkpoint(path, weights_only=True)
    x = torch.randn(4, 3, 8, 8)
    module.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(x), module(x))
    logged = run.callback_metrics
    assert 0.0 <= float(logged["diag/flip_ratio_mean"]) <= 1.0
    assert 0.0 <= float(logged["diag/sign_balance/stages.0.0.conv"]) <= 1.0


def test_step_interval_schedule_anneals_to_zero(tmp_path):
    """A per-step warm-up + cosine schedule, as a short run (the quickstart) needs."""
    schedule = partial(WarmupCosineLR, warmup_fraction=0.25, warmup_factor=0.5)  # 8 steps
    module = BNNClassifier(net(), lr_scheduler=schedule, scheduler_interval="step")
    probe, monitor = Probe(), LearningRateMonitor()
    lrs: list[float] = []
    recorder = LambdaCallback(
        on_train_batch_start=lambda t, *_: lrs.append(t.optimizers[0].param_groups[0]["lr"])
    )
    callbacks = [monitor, probe, recorder]
    run = trainer(tmp_path, callbacks, max_steps=8, logger=logger(tmp_path), log_every_n_steps=1)
    run.fit(module, loader(), loader())
    expected = [5e-4, 7.5e-4] + [5e-4 * (1 + math.cos(math.pi * s / 6)) for s in range(6)]
    assert lrs == pytest.approx(expected)
    assert probe.logged[1]["train/lr/decay"] == pytest.approx(expected[-1])  # the scheduler's name
    assert monitor.lrs["train/lr/decay"] == pytest.approx(expected)
