"""Per-rank random streams of the training data and their exact resume (loader, Lightning)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from bnn_lightning.data import (
    BatchAugment,
    BatchMix,
    ImageFolderDataModule,
    ResumableDataLoader,
    SeededTransform,
)
from bnn_lightning.data.base import TransformSubset
from bnn_lightning.data.resumable import RandomStream, stream_seed

EPOCHS, IMAGES, BATCH = 3, 16, 4  # 4 batches an epoch on one rank, 2 on each of two


class SamePicture(Dataset):
    """``IMAGES`` copies of one 8x8 picture: batches differ by their random draws alone."""

    picture = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 8, 8), np.uint8))

    def __len__(self) -> int:
        return IMAGES

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.picture, index  # the target tells which image it was


def make_loader(rank: int = 0, world: int = 1, workers: int = 0, persistent: bool = False):
    """A loader whose batches depend on all three kinds of stream: per image, batch, mix."""
    flip_crop = v2.Compose([v2.RandomCrop(8, padding=2), v2.RandomHorizontalFlip()])
    dataset = TransformSubset(SamePicture(), None, SeededTransform(flip_crop))
    streams = {"augment": BatchAugment(padding=1, rotation=10), "mix": BatchMix(IMAGES, 0.5, 1.0)}
    dataset.transform.reseed(stream_seed(7, rank, "images"))  # type: ignore[union-attr]
    for name, stream in streams.items():
        stream.reseed(stream_seed(7, rank, name))
    loader = ResumableDataLoader(
        dataset, batch_size=BATCH // world, shuffle=True, drop_last=True, seed=7, rank=rank,
        world_size=world, num_workers=workers, persistent_workers=persistent, streams=streams,
    )  # fmt: skip
    return loader, streams


def batches(loader: ResumableDataLoader, streams: dict[str, Any], steps: int, epoch: int = 0):
    """The next ``steps`` training batches as Lightning runs them, from ``epoch`` on.

    Lightning calls ``set_epoch`` before each epoch's ``iter`` (and, on resume, after it), then
    applies the batch transforms after the transfer; a checkpoint's state is taken after a step.
    """
    out: list[torch.Tensor] = []
    resuming = loader._resume is not None
    while len(out) < steps:
        if not resuming:
            loader.sampler.set_epoch(epoch)
        epoch_batches = iter(loader)
        loader.sampler.set_epoch(epoch)
        resuming = False
        for images, targets in epoch_batches:
            mixed, soft = streams["mix"](streams["augment"](images).float(), targets)
            out.append(torch.cat([mixed.flatten(), soft.flatten()]))
            if len(out) == steps:
                return out, loader.state_dict()
        epoch += 1
    raise AssertionError("unreachable")


def test_stream_seeds_differ_by_rank_and_name_and_repeat() -> None:
    seeds = {stream_seed(0, r, n) for r in range(4) for n in ("images", "augment", "mix")}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert stream_seed(0, 1, "mix") == stream_seed(0, 1, "mix") != stream_seed(1, 1, "mix")


def test_two_ranks_draw_different_augmentations_of_the_same_picture() -> None:
    (first0,), _ = batches(*make_loader(rank=0, world=2), steps=1)
    (first1,), _ = batches(*make_loader(rank=1, world=2), steps=1)
    (again0,), _ = batches(*make_loader(rank=0, world=2), steps=1)
    assert torch.equal(first0, again0)
    assert not torch.equal(first0, first1)


@pytest.mark.parametrize(
    ("rank", "world", "workers", "persistent"),
    [(0, 1, 0, False), (1, 2, 0, False), (1, 2, 2, False), (0, 2, 2, True)],
)
@pytest.mark.parametrize("stop", [3, 4, 6])  # 4 batches an epoch on one rank: 4 ends epoch 0
def test_resume_from_a_state_continues_every_stream_exactly(
    rank: int, world: int, workers: int, persistent: bool, stop: int
) -> None:
    total = EPOCHS * IMAGES // BATCH
    reference, _ = batches(*make_loader(rank, world, workers, persistent), steps=total)
    loader, streams = make_loader(rank, world, workers, persistent)
    before, state = batches(loader, streams, steps=stop)
    resumed_loader, resumed_streams = make_loader(rank, world, workers, persistent)
    resumed_loader.load_state_dict(state)
    epoch = state["epoch"] + (state["yielded"] == len(loader))  # Lightning's current_epoch
    after, _ = batches(resumed_loader, resumed_streams, steps=total - stop, epoch=epoch)
    assert len(before + after) == len(reference)
    for step, (got, want) in enumerate(zip(before + after, reference, strict=True)):
        assert torch.equal(got, want), f"step {step} differs"


def test_a_state_of_another_rank_is_ignored() -> None:
    loader, streams = make_loader(rank=0, world=2)
    _, state = batches(loader, streams, steps=1)
    other, other_streams = make_loader(rank=1, world=2)
    fresh = other_streams["augment"].generator.get_state()
    other.load_state_dict(state)
    assert torch.equal(other_streams["augment"].generator.get_state(), fresh)
    assert other._resume is None


def test_stream_state_names_its_device_when_it_cannot_resume() -> None:
    stream = RandomStream(3)
    state = {**stream.state_dict(), "device": "cuda"}
    with pytest.raises(ValueError, match="saved on cuda and cannot resume on cpu"):
        stream.load_state_dict(state)


def test_seeded_transform_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    SeededTransform(lambda x: x + torch.rand(1), seed=5)(torch.zeros(1))
    assert torch.equal(torch.rand(3), expected)


# --- through Lightning: a fit stopped after a checkpoint and resumed sees the same batches ------


class Stop(Exception):
    """Ends a fit right after its checkpoint (as a crash would)."""


class Recording(L.LightningModule):
    """A linear classifier that records every training batch it sees; with ``stop_at``, it
    saves a checkpoint after that step and stops. Its schedule reads the run's length from
    ``trainer.estimated_stepping_batches``, which makes Lightning build the loader before the
    checkpoint is restored (Lightning issue 20550)."""

    def __init__(self, checkpoint: Path, stop_at: int | None = None) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 3)
        self.checkpoint, self.stop_at = checkpoint, stop_at
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        self.seen.append(torch.cat([images.flatten(), targets.flatten().float()]))
        return torch.nn.functional.cross_entropy(self.linear(images.flatten(1)), targets)

    def on_train_batch_end(self, *args: Any) -> None:
        if self.global_step == self.stop_at:
            self.trainer.save_checkpoint(self.checkpoint)
            raise Stop

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        steps = self.trainer.estimated_stepping_batches
        return [optimizer], [torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, int(steps))]


def fit(module: Recording, data: Any, ckpt_path: Path | None = None) -> list[torch.Tensor]:
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    with contextlib.suppress(Stop):
        trainer.fit(module, data, ckpt_path=ckpt_path)
    return module.seen


@pytest.mark.parametrize(("in_memory", "workers"), [(True, 0), (False, 2)])
@pytest.mark.parametrize("stop_at", [2, 3])  # 3 steps an epoch: 3 ends the first epoch
def test_fit_resumed_after_a_checkpoint_sees_the_batches_of_an_uninterrupted_fit(
    tmp_path: Path, in_memory: bool, workers: int, stop_at: int
) -> None:
    tree = tmp_path / "tree"
    for k in range(3):
        for i in range(7):
            (tree / "train" / f"c{k}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 * k + i, np.uint8)).save(
                tree / "train" / f"c{k}" / f"{i}.png"
            )

    def data() -> ImageFolderDataModule:
        return ImageFolderDataModule(
            str(tree), cache_dir=str(tmp_path / "cache"), pipeline="cifar", image_size=8,
            padding=2, rotation=20, val_size=3, batch_size=6, in_memory=in_memory,
            num_workers=workers, persistent_workers=False, mixup_alpha=0.4,
        )  # fmt: skip

    L.seed_everything(3, verbose=False)
    reference = fit(Recording(tmp_path / "c.ckpt"), data())
    L.seed_everything(3, verbose=False)
    before = fit(Recording(tmp_path / "c.ckpt", stop_at=stop_at), data())
    L.seed_everything(3, verbose=False)
    after = fit(Recording(tmp_path / "c.ckpt"), data(), ckpt_path=tmp_path / "c.ckpt")
    assert len(reference) == 9 and len(before) == stop_at
    for step, (got, want) in enumerate(zip(before + after, reference, strict=True)):
        assert torch.equal(got, want), f"step {step} differs"
