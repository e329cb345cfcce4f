"""Train a tiny binary ResNet with synchronized BatchNorm on fixed data (the DDP parity test).

``python ddp_parity.py --devices N --out DIR`` runs ``--steps`` steps with the global batch
``--batch`` split over N CPU processes (gloo DDP when N > 1; Lightning starts the other processes
by running this script again), with :class:`~bnn_lightning.sync_batchnorm.GlobalBatchNorm`
synchronizing the BatchNorm statistics; step t trains on the same ``--batch`` images for any N.
Every rank writes ``DIR/losses<rank>.json`` (its per-step loss on its share
of the batch); rank 0 writes ``DIR/final.pt`` (the net's weights). With ``--nan-at-step K``
rank 1's images of step K are NaN (``--local-bn`` keeps the NaN out of rank 0's BatchNorm
statistics), and each rank that stops writes ``DIR/error<rank>.txt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from bnn_lightning.callbacks import NonFiniteLossError
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier
from bnn_lightning.sync_batchnorm import GlobalBatchNormSync


class Losses(L.Callback):
    """Every step's loss; with ``nan_at_step``, rank 1's images of that step become NaN."""

    def __init__(self, nan_at_step: int | None) -> None:
        self.values: list[float] = []
        self.nan_at_step = nan_at_step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_rank == 1 and trainer.global_step == self.nan_at_step:
            args[1][0].fill_(float("nan"))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.values.append(float(args[1]["loss"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mode", default="binary")
    parser.add_argument("--nan-at-step", type=int, default=None)
    parser.add_argument("--local-bn", action="store_true", help="no BatchNorm synchronization")
    args = parser.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.steps * args.batch, 3, 16, 16, generator=g)
    labels = torch.randint(0, 4, (len(images),), generator=g)
    dataset = TensorDataset(images, labels)
    # Under DDP Lightning shuffles with DistributedSampler(seed=0); one process takes the same
    # permutation whole, so step t trains on the same images either way.
    sampler = DistributedSampler(dataset, 1, 0, seed=0) if args.devices == 1 else None
    loader = DataLoader(dataset, batch_size=args.batch // args.devices, sampler=sampler)
    module = BNNClassifier(BinaryResNet("resnet18", 4, stem="cifar", width=8, mode=args.mode), 4)
    losses = Losses(args.nan_at_step)
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, max_steps=args.steps, deterministic=True,
        strategy="ddp" if args.devices > 1 else "auto",
        plugins=[GlobalBatchNormSync()] if args.devices > 1 and not args.local_bn else None,
        callbacks=[losses], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        trainer.fit(module, loader)
    except NonFiniteLossError as err:
        (out / f"error{trainer.global_rank}.txt").write_text(str(err))
        return
    (out / f"losses{trainer.global_rank}.json").write_text(json.dumps(losses.values))
    if trainer.is_global_zero:
        torch.save(module.net.state_dict(), out / "final.pt")


if __name__ == "__main__":
    main()
