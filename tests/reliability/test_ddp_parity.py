"""8. DDP parity: 2-process CPU DDP (gloo) with global batch B follows the loss trajectory of one
process with batch B, for a ResNet whose BatchNorms are synchronized.

PyTorch's ``SyncBatchNorm`` (``sync_batchnorm: true``) refuses CPU modules, so CPU runs use
``GlobalBatchNormSync`` (:mod:`bnn_lightning.sync_batchnorm`); its maths are checked first
against one BatchNorm over the whole batch.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from reliability_helpers import HERE, ROOT, bnn_env, fit_args, recorded_losses
from torch import nn

from bnn_lightning.checkpoint_io import read_checkpoint
from bnn_lightning.sync_batchnorm import GlobalBatchNorm, GlobalBatchNormSync


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 inputs of 3 channels and the upstream gradient of each output."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 4, 4, generator=g) * 3 + 1, torch.randn(8, 3, 4, 4, generator=g)


def half_batch_norm(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    x, upstream = batch()
    net = GlobalBatchNormSync().apply(nn.Sequential(nn.BatchNorm2d(3)))
    mine = x[rank::2].clone().requires_grad_(True)
    y = net(mine)
    (y * upstream[rank::2]).sum().backward()
    bn = net[0]
    found = [y.detach(), mine.grad, bn.weight.grad, bn.running_mean, bn.running_var]
    torch.save(found, out + str(rank))
    dist.destroy_process_group()


@pytest.mark.ddp
def test_8_global_batch_norm_over_2_processes_equals_batch_norm_over_the_whole_batch(
    tmp_path: Path,
) -> None:
    mp.spawn(half_batch_norm, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2)
    x, upstream = batch()
    bn, x = nn.BatchNorm2d(3), x.requires_grad_(True)
    y = bn(x)
    (y * upstream).sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}", weights_only=True) for r in (0, 1)]
    for r, (y_r, grad_r, _, mean_r, var_r) in enumerate(ranks):
        torch.testing.assert_close(y_r, y.detach()[r::2])
        torch.testing.assert_close(grad_r, x.grad[r::2])
        torch.testing.assert_close(mean_r, bn.running_mean)
        torch.testing.assert_close(var_r, bn.running_var)
    torch.testing.assert_close(ranks[0][2] + ranks[1][2], bn.weight.grad)


def test_8_global_batch_norm_is_plain_batch_norm_in_one_process_and_reverts() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(2)))
    synced = GlobalBatchNormSync().apply(net)
    assert isinstance(synced[1], GlobalBatchNorm) and isinstance(synced[2][0], GlobalBatchNorm)
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(synced[1](x), nn.functional.batch_norm(x, None, None, training=True))
    reverted = GlobalBatchNormSync().revert(synced)
    assert type(reverted[1]) is nn.BatchNorm2d and type(reverted[2][0]) is nn.BatchNorm1d
    assert reverted[1].running_mean is synced[1].running_mean


def parity_run(out: Path, devices: int, mode: str, steps: int) -> tuple[list[float], dict]:
    """Per-step global losses and final weights of ``ddp_parity.py``."""
    command = [sys.executable, str(HERE / "ddp_parity.py"), "--devices", str(devices)]
    command += ["--out", str(out), "--mode", mode, "--steps", str(steps)]
    result = subprocess.run(
        command, env=bnn_env(), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    per_rank = [json.loads((out / f"losses{r}.json").read_text()) for r in range(devices)]
    losses = [sum(step) / devices for step in zip(*per_rank, strict=True)]
    return losses, torch.load(out / "final.pt", weights_only=True)


def weight_differences(a: dict, b: dict) -> torch.Tensor:
    return torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize(("mode", "steps", "loss_atol"), [("float", 8, 1e-3), ("binary", 2, 1e-6)])
def test_8_two_process_ddp_follows_the_one_process_loss_trajectory(
    mode: str, steps: int, loss_atol: float, tmp_path: Path
) -> None:
    """Global batch 16: one process, or two with 8 each. Float losses track to ~1e-4 over 8 Adam
    steps; a binary net turns the ~1e-7 reduction-order differences into sign flips after its
    first update, so its losses are held to 1e-6 for the two steps before that shows. Weights:
    Adam's early steps are close to ``lr * sign(grad)``, so a weight whose gradient is ~0 may
    move by up to ``lr`` = 1e-3 either way; on average they agree to 1e-5."""
    single, single_weights = parity_run(tmp_path / "one", 1, mode, steps)
    ddp, ddp_weights = parity_run(tmp_path / "two", 2, mode, steps)
    assert len(single) == steps
    torch.testing.assert_close(ddp, single, rtol=0, atol=loss_atol)
    differences = weight_differences(single_weights, ddp_weights)
    assert differences.max() <= 1e-3 and differences.mean() <= 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_command(tree: Path, run: Path, node: int, port: int) -> list[str]:
    """``torchrun`` of ``bnn fit`` on one of two "machines" (``--nnodes 2``, one process each,
    c10d rendezvous on 127.0.0.1): ``tiny.yaml`` with ``configs/trainer/multinode.yaml`` on CPU
    (gloo, ``GlobalBatchNormSync``), a data cache of its own as on its own disk, one epoch."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
    torchrun += ["--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_id", "bnn-test"]
    torchrun += ["--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "bnn_lightning"]
    sync = {"class_path": "bnn_lightning.sync_batchnorm.GlobalBatchNormSync"}
    preset = ["--config", str(ROOT / "configs" / "trainer" / "multinode.yaml")]
    preset += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2"]
    preset += ["--trainer.sync_batchnorm", "false", "--trainer.precision", "32-true"]
    preset += ["--trainer.plugins", json.dumps([sync]), "--trainer.max_epochs", "1"]
    preset += ["--checkpoint.every_n_train_steps", "2"]
    return [
        *torchrun,
        *fit_args(tree, run, *preset, "--data.init_args.cache_dir", str(run / f"cache{node}")),
    ]


@pytest.mark.ddp
def test_8_two_torchrun_nodes_train_in_sync(image_tree: Path, tmp_path: Path) -> None:
    """Global batch 8 over two torchrun nodes sharing the run folder, 4 steps: both end with
    identical weights after training on different shards, and rank 0's ``last.ckpt`` holds them."""
    port, log = free_port(), {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    command = partial(node_command, image_tree, tmp_path, port=port)
    nodes = [
        subprocess.Popen(command(node), env=bnn_env(), cwd=ROOT, text=True, **log)
        for node in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    losses = [recorded_losses(tmp_path, rank) for rank in (0, 1)]
    assert sorted(losses[0]) == sorted(losses[1]) == [1, 2, 3, 4]  # 32 images, 4 per process
    assert losses[0] != losses[1]  # each node trained on its own shard
    weights = [torch.load(tmp_path / "rec" / f"weights{r}.pt", weights_only=True) for r in (0, 1)]
    saved = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 4
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
        assert torch.equal(saved["state_dict"][f"net.{key}"], value), key
