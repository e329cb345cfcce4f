"""Each DDP rank draws its own augmentation, and a resumed DDP run continues every rank's stream.

Two CPU processes over gloo. Every image of the training folder is the same picture, so two
ranks' batches differ only where their random crops, flips and MixUp draws differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import ROOT, bnn, fit_args, recorded_losses, run_differences

from bnn_lightning.data import ImageFolderDataModule

CONFIGS = ROOT / "configs"


def same_picture_tree(root: Path, classes: int = 10, per_class: int = 4) -> Path:
    """``root/train/c<k>/<i>.png``: one random 32x32 picture, ``classes * per_class`` times."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    for k in range(classes):
        (root / "train" / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            picture.save(root / "train" / f"c{k}" / f"{i}.png")
    return root


@pytest.mark.ddp
@pytest.mark.slow
def test_8_two_ranks_augment_the_same_picture_differently(tmp_path: Path) -> None:
    """The quickstart config (in-memory data, flip; random crop with 4-pixel padding added here,
    the quickstart has none) with the ``ddp_cpu`` preset, one step: each rank's first batch, as
    its training step sees it. The decoded cache is warm, so rank 0 does no decoding the other
    rank does not."""
    tree = same_picture_tree(tmp_path / "tree")
    warm = ImageFolderDataModule(
        str(tree), cache_dir=str(tmp_path / "cache"), pipeline="cifar", image_size=32,
        in_memory=True,
    )  # fmt: skip
    warm.prepare_data()
    recorder = {"class_path": "batch_recorder.FirstBatch", "init_args": {"out": str(tmp_path)}}
    result = bnn(
        "fit", "--config", str(CONFIGS / "cifar10" / "quickstart.yaml"),
        "--config", str(CONFIGS / "trainer" / "ddp_cpu.yaml"),
        "--data.init_args.root", str(tree), "--data.init_args.cache_dir", str(tmp_path / "cache"),
        "--data.init_args.val_size", "8", "--data.init_args.batch_size", "16",
        "--data.init_args.padding", "4", "--compile", "false",
        "--model.net.init_args.width", "8", "--trainer.max_steps", "1",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=" + json.dumps(recorder),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first = [torch.load(tmp_path / f"first{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert first[0]["images"].shape == first[1]["images"].shape == (8, 3, 32, 32)
    assert not torch.equal(first[0]["images"], first[1]["images"])
    # Within a batch too the copies of the one picture differ: crops and flips are per image.
    assert len({img.numpy().tobytes() for img in first[0]["images"]}) > 1


@pytest.mark.ddp
@pytest.mark.slow
def test_8_two_process_run_killed_mid_epoch_resumes_each_ranks_streams_exactly(
    image_tree: Path, tmp_path: Path
) -> None:
    """``tiny.yaml`` (per-image crops, flips, rotations and MixUp) on 2 processes, 4 steps an
    epoch: SIGKILL at step 7, resume from step 6's ``last.ckpt``; every rank's losses and the
    final weights equal those of an uninterrupted run."""
    extra = ("--trainer.strategy", "ddp", "--trainer.devices", "2")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert bnn(*fit_args(image_tree, reference, *extra)).returncode == 0
    killed = bnn(*fit_args(image_tree, run, *extra, kill_at_step=7))
    assert killed.returncode != 0  # both ranks SIGKILL themselves at step 7
    resumed = bnn(*fit_args(image_tree, run, *extra), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):
        resumed, full = recorded_losses(run, rank), recorded_losses(reference, rank)
        assert sorted(resumed) == list(range(7, 13))
        assert resumed == {step: full[step] for step in resumed}
    assert recorded_losses(reference, 0) != recorded_losses(reference, 1)
    assert run_differences(reference, run) == {}
