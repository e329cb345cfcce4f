"""1. Crash and resume: a ``bnn fit`` killed with SIGKILL and restarted with ``--ckpt_path last``
ends with the same weights and metrics as a run that was never interrupted (CPU, same seed).

The runs are ``tiny.yaml``: random crops, flips, rotations and MixUp, 4 steps per epoch,
checkpoints every 3 steps; the kill comes from :class:`faults.Recorder` or from this process.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    ROOT,
    bnn,
    bnn_command,
    bnn_env,
    fit_args,
    recorded_losses,
    run_differences,
)

from bnn_lightning.checkpoint_io import read_checkpoint


def crash_then_resume(tree: Path, run: Path, kill_at_step: int, *extra: str) -> None:
    killed = bnn(*fit_args(tree, run, *extra, kill_at_step=kill_at_step))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = bnn(*fit_args(tree, run, *extra), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_1_fit_killed_mid_epoch_resumes_from_last_to_identical_weights_and_metrics(
    image_tree: Path, reference_run: Path, tmp_path: Path
) -> None:
    crash_then_resume(image_tree, tmp_path, kill_at_step=7)  # last.ckpt: step 6 of epoch 1
    assert sorted(recorded_losses(tmp_path)) == list(range(7, 13))
    assert run_differences(reference_run, tmp_path) == {}


def test_1_fit_killed_in_its_first_epoch_resumes_from_the_step_checkpoint_before_validation(
    image_tree: Path, reference_run: Path, tmp_path: Path
) -> None:
    """``last.ckpt`` is written at step 3 (every 3 steps), before ``val/acc_top1`` exists."""
    killed = bnn(*fit_args(image_tree, tmp_path, kill_at_step=4))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 3
    resumed = bnn(*fit_args(image_tree, tmp_path), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(recorded_losses(tmp_path)) == list(range(4, 13))
    assert run_differences(reference_run, tmp_path) == {}


@pytest.mark.slow
def test_1_resume_from_a_checkpoint_after_an_epochs_last_step_is_exact(
    image_tree: Path, tmp_path: Path
) -> None:
    """The in-memory pipeline (batch-level augmentation); step 8 ends epoch 1, and its
    checkpoint comes before that epoch's validation."""
    extra = ("--data.init_args.in_memory", "true", "--checkpoint.every_n_train_steps", "4")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert bnn(*fit_args(image_tree, reference, *extra)).returncode == 0
    crash_then_resume(image_tree, run, 10, *extra)
    assert sorted(recorded_losses(run)) == list(range(9, 13))
    assert run_differences(reference, run) == {}


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def kill_after_next_checkpoint(args: list[str], last: Path, rng: random.Random) -> bool:
    """Run ``bnn *args``; SIGKILL it 0-0.3 s after it next writes ``last``. True if killed."""
    before = mtime(last)
    process = subprocess.Popen(
        bnn_command(*args), env=bnn_env(), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while process.poll() is None and mtime(last) == before:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    code = process.wait(timeout=300)
    assert code in (0, -signal.SIGKILL), f"exit code {code}"
    return code == -signal.SIGKILL


@pytest.mark.slow
def test_1_fit_killed_at_random_moments_by_another_process_ends_like_an_uninterrupted_run(
    image_tree: Path, tmp_path: Path
) -> None:
    """SIGKILL from outside, twice, wherever the run is (a step, validation, a checkpoint
    write), with 2 data-loading workers and 6 epochs; then run to the end."""
    extra = ("--trainer.max_epochs", "6", "--data.init_args.num_workers", "2")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert bnn(*fit_args(image_tree, reference, *extra)).returncode == 0
    args = [*fit_args(image_tree, run, *extra), "--ckpt_path", "last"]
    rng = random.Random(0)
    kills = sum(
        kill_after_next_checkpoint(args, run / "checkpoints" / "last.ckpt", rng) for _ in range(2)
    )
    assert kills == 2
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] < 24
    final = bnn(*args)
    assert final.returncode == 0, final.stderr[-3000:]
    assert run_differences(reference, run) == {}
