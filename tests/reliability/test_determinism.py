"""7. Determinism: two CPU runs with the same seed give identical losses over the first 20 steps.

The run has everything random switched on: shuffling, random crops, flips and rotations in two
DataLoader workers, and MixUp; ``seed_everything(seed, workers=True)`` and
``Trainer(deterministic=True)`` make it repeatable (the ``bnn`` CLI does both for
``seed_everything: <int>``). A third run with another seed shows the test can tell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from reliability_helpers import tiny_module, tiny_trainer

from bnn_lightning.data import ImageFolderDataModule


class Losses(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.values.append(float(args[1]["loss"]))


def first_20_losses(tree: Path, root: Path, seed: int) -> list[float]:
    L.seed_everything(seed, workers=True, verbose=False)
    data = ImageFolderDataModule(
        str(tree), cache_dir=str(root / "cache"), pipeline="cifar", image_size=16, val_size=8,
        batch_size=4, num_workers=2, mixup_alpha=0.4,
    )  # fmt: skip
    losses = Losses()
    trainer = tiny_trainer(root, max_steps=20, deterministic=True, callbacks=[losses])
    trainer.fit(tiny_module(), data)
    return losses.values


def test_7_two_runs_with_the_same_seed_have_identical_losses_for_20_steps(
    image_tree: Path, tmp_path: Path
) -> None:
    first = first_20_losses(image_tree, tmp_path / "a", seed=0)
    second = first_20_losses(image_tree, tmp_path / "b", seed=0)
    assert len(first) == 20 and first == second
    other = first_20_losses(image_tree, tmp_path / "c", seed=1)
    assert all(a != b for a, b in zip(first, other, strict=True))
