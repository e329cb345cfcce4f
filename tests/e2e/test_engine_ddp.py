"""The engine under DDP (2 CPU processes, gloo): diagnostics count every rank's inputs, and class
centers created by a mid-run StageHandoff stay identical on every rank."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.callbacks import BNNDiagnostics, StageHandoff
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier

LAYER = "stages.0.0.conv"


class LocalCounts(L.Callback):
    """Saves this rank's own (#inputs >= 0, #inputs) of one layer at the first step."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        layer = pl_module.net.get_submodule(LAYER)
        self.handle = layer.register_forward_pre_hook(self.count)

    def count(self, module, args) -> None:
        x = args[0]
        self.counts = (int((x >= 0).sum()), int((x.abs() > 1).sum()), x.numel())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.handle.remove()
        torch.save(self.counts, self.folder / f"rank{trainer.global_rank}.pt")


class SaveCenters(L.Callback):
    """Saves this rank's class centers and classifier weights at the end of training."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        tensors = (pl_module.criterion.center_loss.centers, pl_module.net.fc.weight)
        path = self.folder / f"centers{trainer.global_rank}.pt"
        torch.save([t.detach().clone() for t in tensors], path)


def ddp_fit(callbacks: list[L.Callback], **kwargs) -> L.Trainer:
    net = BinaryResNet("resnet18", num_classes=10, stem="cifar", width=8, mode="binary")
    data = TensorDataset(torch.randn(32, 3, 8, 8) + 0.3, torch.randint(0, 10, (32,)))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, **kwargs,
    )  # fmt: skip
    trainer.fit(BNNClassifier(net), DataLoader(data, batch_size=8))
    return trainer


@pytest.mark.slow
@pytest.mark.ddp
def test_centers_created_mid_run_stay_in_sync(tmp_path):
    handoff = StageHandoff(epoch=1, lr=1e-3, loss_weights={"center_weight": 0.1})
    ddp_fit([handoff, SaveCenters(tmp_path)], max_epochs=2)
    (centers0, fc0), (centers1, fc1) = (torch.load(tmp_path / f"centers{r}.pt") for r in (0, 1))
    assert torch.equal(fc0, fc1)  # DDP keeps the net in sync ...
    assert torch.equal(centers0, centers1)  # ... and the module the late centers


@pytest.mark.slow
@pytest.mark.ddp
def test_diagnostics_sum_counts_over_ranks(tmp_path):
    trainer = ddp_fit([BNNDiagnostics(every_n_steps=1), LocalCounts(tmp_path)], max_steps=1)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0] != ranks[1]  # each rank saw its own half of the data
    positive, saturated, numel = (sum(c[i] for c in ranks) for i in range(3))
    logged = trainer.callback_metrics
    assert float(logged[f"diag/sign_balance/{LAYER}"]) == pytest.approx(positive / numel)
    assert float(logged[f"diag/saturation/{LAYER}"]) == pytest.approx(saturated / numel)
