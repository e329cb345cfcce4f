"""Run by ``test_ddp.py``: ``python tests/e2e/ddp_script.py OUT_DIR``.

Lightning's DDP launcher starts this script once more for rank 1; each rank trains the
quickstart config with the ``ddp_cpu`` preset on a tiny fake tree in ``OUT_DIR`` and writes what
it saw to ``OUT_DIR/rank<k>.json``; then both predict every image of the tree, each writing its
share to its own CSV.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from fakes import CONFIGS, tiny_data_args, tiny_run_args
from lightning.pytorch import Callback, LightningModule, Trainer

from bnn_lightning.cli import BNNCLI
from bnn_lightning.prediction import CSVPredictionWriter


class FirstBatch(Callback):
    """Remember the targets of this rank's first training batch and its BatchNorm classes."""

    targets: list[int] = []
    norms: list[str] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: tuple, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            FirstBatch.targets = batch[1].tolist()
            FirstBatch.norms = sorted(
                {type(m).__name__ for m in pl_module.modules() if "Norm" in type(m).__name__}
            )


def main(out: Path) -> None:
    args = ["--config", str(CONFIGS / "cifar10" / "quickstart.yaml")]
    args += ["--config", str(CONFIGS / "trainer" / "ddp_cpu.yaml")]
    args += [*tiny_data_args("bnn_lightning.ImageFolderDataModule", out), *tiny_run_args(out)]
    args += ["--data.init_args.batch_size", "8", "--trainer.max_epochs", "1"]
    args += ["--trainer.num_sanity_val_steps", "0"]
    args += ["--data.init_args.predict_root", str(out / "tree")]  # every image, train and val
    cli = BNNCLI(args=args, run=False)
    cli.trainer.callbacks.append(FirstBatch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    val = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if "val/" in k}
    writer = CSVPredictionWriter()  # what `bnn predict` adds
    cli.trainer.callbacks.append(writer)
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    params = torch.cat([p.detach().flatten().float() for p in cli.model.net.parameters()])
    report = {
        "world_size": cli.trainer.world_size,
        "global_step": cli.trainer.global_step,
        "per_device_batch_size": cli.datamodule.per_device_batch_size,
        "first_targets": FirstBatch.targets,
        "params_sum": params.sum().item(),
        "params_abs_sum": params.abs().sum().item(),
        "norms_in_training": FirstBatch.norms,
        "val": val,
        "predictions": {"file": str(writer.path), "rows": writer.rows},
    }
    (out / f"rank{cli.trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
