"""``bnn validate`` and ``bnn test`` evaluate a checkpoint: the logged metrics equal the
checkpoint's network run over the split by hand (top-1 and top-5 accuracy as the fraction of
images, the label-smoothed cross-entropy averaged over images)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from fakes import CONFIGS, tiny_run_args
from PIL import Image

from bnn_lightning.checkpoints import net_from_checkpoint
from bnn_lightning.cli import BNNCLI, main
from bnn_lightning.tta import tta_logits

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

QUICKSTART = CONFIGS / "cifar10" / "quickstart.yaml"
TTA = yaml.safe_load(QUICKSTART.read_text())["model"]["tta"]  # validate and test use its views
CLASSES = 10


def write_uneven_tree(root: Path) -> Path:
    """``train/`` with 3 images a class, ``val/`` with 1 to 3 (unbalanced, as a held-out split
    is: a per-class average of the accuracy would differ from the fraction of images)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", lambda k: 3), ("val", lambda k: k % 3 + 1)):
        for k in range(CLASSES):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count(k)):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def args(tmp: Path, version: str) -> list[str]:
    """The quickstart on the tiny tree, fp32 (so the hand-run net matches), logs in ``version``."""
    return [
        "--config", str(QUICKSTART), *tiny_run_args(tmp),
        "--data.init_args.root", str(tmp / "tree"), "--data.init_args.val_size", "null",
        "--data.init_args.cache_dir", str(tmp / "cache"), "--data.init_args.batch_size", "4",
        "--trainer.precision", "32-true", "--trainer.logger.init_args.version", version,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose ``checkpoints/last.ckpt`` is 3 training steps of the quickstart."""
    tmp = tmp_path_factory.mktemp("evaluate")
    write_uneven_tree(tmp / "tree")
    steps = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "0"]
    main(["fit", *args(tmp, "fit"), *steps])
    return tmp


def logged(tmp: Path, version: str) -> dict[str, float]:
    """The metrics a command logged (one row: validate and test log once)."""
    with (tmp / "run" / "csv" / version / "metrics.csv").open() as f:
        rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    assert len(rows) == 1, rows
    return rows[0]


def by_hand(tmp: Path, split: str, ckpt: Path) -> dict[str, float]:
    """The checkpoint's network over ``split`` of the config's DataModule, metric by metric."""
    datamodule = BNNCLI(args=args(tmp, "unused"), run=False).datamodule
    datamodule.prepare_data()
    datamodule.setup(split)
    loader = datamodule.val_dataloader() if split == "validate" else datamodule.test_dataloader()
    net = net_from_checkpoint(ckpt).eval()
    batches = [datamodule.transform_batch(batch, train=False) for batch in loader]
    with torch.no_grad():
        logits = torch.cat([tta_logits(net, x, TTA) for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    top5 = logits.topk(5, dim=1).indices
    return {
        "loss": float(F.cross_entropy(logits, labels, label_smoothing=0.1)),
        "acc_top1": float((logits.argmax(1) == labels).float().mean()),
        "acc_top5": float((top5 == labels[:, None]).any(1).float().mean()),
        "images": len(labels),
    }


@pytest.mark.parametrize(("command", "prefix"), [("validate", "val"), ("test", "test")])
def test_evaluation_logs_the_checkpoints_metrics(trained: Path, command: str, prefix: str) -> None:
    ckpt = trained / "run" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    main([command, *args(trained, command), "--ckpt_path", str(ckpt)])
    got, expected = logged(trained, command), by_hand(trained, command, ckpt)
    assert expected["images"] == 19  # the whole val/ folder, in batches of 4
    for metric in ("loss", "acc_top1", "acc_top5"):
        assert got[f"{prefix}/{metric}"] == pytest.approx(expected[metric], rel=1e-4), metric
    assert ckpt.read_bytes() == before  # evaluation trains nothing, writes nothing
