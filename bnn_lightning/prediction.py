"""``bnn predict`` output: one CSV row per image with its predicted class and the top-k.

:class:`CSVPredictionWriter` is a Lightning ``BasePredictionWriter`` that the ``bnn`` CLI adds to
``predict`` (:mod:`bnn_lightning.cli_defaults`). It writes
``<default_root_dir>/predictions/predictions.csv`` (``predictions-rank<r>.csv`` per process under
DDP) as batches come, so memory stays flat on large folders:

.. code-block:: text

    path,class,probability,top5_classes,top5_probabilities
    photos/cat.jpg,cat,0.912345,cat|dog|deer|horse|frog,0.912345|0.051234|...

``path`` is the image file (``Dataset[index]`` for images that have none, e.g. torchvision's
CIFAR arrays); classes are named by the DataModule's ``classes`` when it has them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from bnn_lightning.data.predict import sample_name

__all__ = ["CSVPredictionWriter"]


def _datasets(trainer: L.Trainer) -> list[Any]:
    loaders = trainer.predict_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    return [getattr(loader, "dataset", None) for loader in loaders]


class CSVPredictionWriter(BasePredictionWriter):
    """Write each predicted batch (class probabilities) as CSV rows.

    Args:
        output_dir: Folder of the CSV file; None uses ``<trainer.default_root_dir>/predictions``.
        top_k: How many of the most probable classes each row lists.
    """

    def __init__(self, output_dir: str | None = None, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be at least 1; set top_k to e.g. 5.")
        self.output_dir, self.top_k = output_dir, top_k
        self.path: Path | None = None
        self.rows = 0
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._classes: Sequence[str] | None = None
        self._seen = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        folder.mkdir(parents=True, exist_ok=True)
        name = "predictions.csv"
        if trainer.world_size > 1:
            name = f"predictions-rank{trainer.global_rank}.csv"
        self.path, self.rows, self._seen = folder / name, 0, 0
        self._classes = getattr(getattr(trainer, "datamodule", None), "classes", None)
        self._file = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        k = f"top{self.top_k}"
        self._writer.writerow(
            ["path", "class", "probability", f"{k}_classes", f"{k}_probabilities"]
        )

    def _name(self, index: int) -> str:
        if self._classes is not None and index < len(self._classes):
            return str(self._classes[index])
        return str(index)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        probabilities = torch.as_tensor(prediction).detach().float().cpu()
        k = min(self.top_k, probabilities.shape[1])
        top_p, top_i = probabilities.topk(k, dim=1)
        dataset = _datasets(trainer)[dataloader_idx]
        if batch_indices is None:  # a loader Lightning could not index: count the rows
            batch_indices = range(self._seen, self._seen + len(probabilities))
        self._seen += len(probabilities)
        for index, p, i in zip(batch_indices, top_p.tolist(), top_i.tolist(), strict=True):
            names = [self._name(c) for c in i]
            path = sample_name(dataset, int(index)) if dataset is not None else str(index)
            self._writer.writerow(
                [path, names[0], f"{p[0]:.6f}", "|".join(names), "|".join(f"{v:.6f}" for v in p)]
            )
        self.rows += len(probabilities)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        rank_zero_info(f"Wrote {self.rows} predictions to {self.path}")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._close()
