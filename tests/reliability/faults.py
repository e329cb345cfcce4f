"""Fault injection for the reliability tests: a callback the ``bnn`` CLI loads by class path.

The tests put this folder on ``PYTHONPATH`` and add
``--trainer.callbacks+={"class_path": "faults.Recorder", "init_args": {...}}`` to a run.
"""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch


def die_while_saving(calls: int) -> None:
    """From now on, the ``calls``-th ``torch.save`` writes half its bytes, then SIGKILLs."""
    real_save, count = torch.save, [0]

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        if count[0] < calls or isinstance(f, (str, os.PathLike)):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


class Crash(RuntimeError):
    """The failure :class:`Recorder` raises at ``fail_at_step``."""


class Recorder(L.Callback):
    """Record every step's loss; SIGKILL this process at the end of ``kill_at_step``.

    At the end of ``fit`` rank 0 writes ``out/final.pt`` (the net's weights) and
    ``out/metrics.json`` (the callback metrics); every rank writes ``out/losses<rank>.json``
    (``{global step: loss}`` of the steps this process ran) and ``out/weights<rank>.pt``. The
    kill comes before the step's checkpoint is written (Lightning runs ``ModelCheckpoint`` last).

    Args:
        out: Folder for the files.
        kill_at_step: Global step whose end kills the process (None: never).
        kill_in_save: With ``kill_at_step``: die half-way through writing the ``kill_in_save``-th
            checkpoint file from the end of that step on, instead of before it.
        fail_at_step: Global step whose end raises :class:`Crash` (a crash a test in the same
            process survives; no checkpoint is written for it).
    """

    def __init__(
        self,
        out: str,
        kill_at_step: int | None = None,
        kill_in_save: int | None = None,
        fail_at_step: int | None = None,
    ) -> None:
        self.out = Path(out)
        self.kill_at_step = kill_at_step
        self.kill_in_save = kill_in_save
        self.fail_at_step = fail_at_step
        self.losses: dict[int, float] = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])
        if trainer.global_step == self.fail_at_step:
            raise Crash(f"crash at step {trainer.global_step}")
        if trainer.global_step != self.kill_at_step:
            return
        if self.kill_in_save is None:
            os.kill(os.getpid(), signal.SIGKILL)
        die_while_saving(self.kill_in_save)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        (self.out / f"losses{rank}.json").write_text(json.dumps(self.losses))
        torch.save(pl_module.net.state_dict(), self.out / f"weights{rank}.pt")
        if rank == 0:
            torch.save(pl_module.net.state_dict(), self.out / "final.pt")
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
