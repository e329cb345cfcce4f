"""2-process DDP on CPU over gloo through the CLI (``configs/trainer/ddp_cpu.yaml``)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import tiny_data_args

from bnn_lightning.checkpoints import net_from_checkpoint

SCRIPT = Path(__file__).with_name("ddp_script.py")
DATA = "bnn_lightning.ImageFolderDataModule"


@pytest.mark.ddp
def test_two_cpu_processes_train_in_sync_and_save_a_loadable_checkpoint(tmp_path: Path) -> None:
    tiny_data_args(DATA, tmp_path)  # written here, not concurrently by the two ranks
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(SCRIPT.parent)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 20 training images, global batch 8: 4 per process, 10 images each -> 2 steps on each rank.
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["per_device_batch_size"] == 4
        assert rank["global_step"] == 2
    assert ranks[0]["first_targets"] != ranks[1]["first_targets"]  # each rank saw its own shard
    assert ranks[0]["params_sum"] == ranks[1]["params_sum"]  # gradients were all-reduced
    assert ranks[0]["val"] == ranks[1]["val"] and "val/acc_top1" in ranks[0]["val"]  # synced
    assert ranks[0]["norms_in_training"] == ["GlobalBatchNorm"]  # the preset's BatchNorm sync
    # predict: each rank writes its own CSV; together every image once, none twice
    files = [Path(rank["predictions"]["file"]) for rank in ranks]
    assert [f.name for f in files] == ["predictions-rank0.csv", "predictions-rank1.csv"]
    rows = [list(csv.DictReader(f.open())) for f in files]
    assert [len(r) for r in rows] == [rank["predictions"]["rows"] for rank in ranks]
    paths = [row["path"] for share in rows for row in share]
    images = sorted(str(p) for p in (tmp_path / "tree").rglob("*") if p.is_file())
    assert sorted(paths) == images and all(rows)
    net = net_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    params = torch.cat([p.detach().flatten().float() for p in net.parameters()])
    assert params.abs().sum().item() == pytest.approx(ranks[0]["params_abs_sum"], rel=1e-6)
