"""Training-step cost of the engine's tricks: distillation terms, center loss, diagnostics.

A binary ResNet-18 (CIFAR stem, width 32; ``--quick``: width 16) trains on random 32x32 batches
of 64 under a real Lightning ``Trainer`` on the CPU, one torch thread, data in the main process.
A callback measures every training batch (``on_train_batch_start`` to ``on_train_batch_end``:
forward, losses, backward, optimizer step, logging) in CPU time of that thread
(``time.thread_time``), which other processes on a shared machine do not inflate the way they
inflate wall time. The configurations run in interleaved rounds; each reports the median step
time, the min-max spread, and the overhead over the label-smoothing baseline. Configurations:

- ``ce``: label-smoothed cross-entropy only (the baseline);
- ``kd``: + KL distillation from a float teacher of the same shape (its forward under no_grad);
- ``kd+refinery+at+center``: + label refinery, attention transfer on the last two stages and
  center loss;
- ``diagnostics every step``: ``BNNDiagnostics(every_n_steps=1)``: hooks on every binary layer,
  sign flips, counts;
- ``diagnostics idle``: the same callback on steps that do not log: no hooks, no cost expected.

``python benchmarks/bench_engine.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from bnn_lightning.callbacks import BNNDiagnostics
from bnn_lightning.models import BinaryResNet
from bnn_lightning.module import BNNClassifier


class StepTimer(L.Callback):
    """CPU time of the main thread for every training batch (all the compute, on one thread)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._start = time.thread_time()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.times.append(time.thread_time() - self._start)


def time_config(width: int, steps: int, warmup: int, **options: Any) -> list[float]:
    """Per-step seconds of one configuration (after ``warmup`` steps)."""
    torch.manual_seed(0)
    diagnostics = options.pop("diagnostics", None)
    net = BinaryResNet("resnet18", num_classes=10, stem="cifar", width=width)
    if options.get("kd_weight"):
        options["teacher"] = BinaryResNet("resnet18", 10, stem="cifar", width=width, mode="float")
    module = BNNClassifier(net, **options)
    data = TensorDataset(torch.randn(64 * 4, 3, 32, 32), torch.randint(0, 10, (64 * 4,)))
    timer = StepTimer()
    callbacks: list[L.Callback] = [timer]
    if diagnostics is not None:
        callbacks.append(BNNDiagnostics(every_n_steps=diagnostics))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=warmup + steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=64, shuffle=True))
    return timer.times[warmup:]


CONFIGS: dict[str, dict[str, Any]] = {
    "ce": {},
    "kd": {"kd_weight": 0.5, "kd_temperature": 4.0},
    "kd+refinery+at+center": {
        "kd_weight": 0.4, "refinery_weight": 0.3, "feature_weight": 10.0, "center_weight": 0.01,
        "feature_pairs": {"stages.2": "stages.2", "stages.3": "stages.3"}, "kd_temperature": 4.0,
    },
    "diagnostics every step": {"diagnostics": 1},
    "diagnostics idle": {"diagnostics": 10**9},
}  # fmt: skip


def run(quick: bool = False) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    width, rounds, steps, warmup = (16, 3, 4, 1) if quick else (32, 3, 5, 2)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        for _ in range(rounds):  # interleaved, so that load changes hit every config alike
            for name, config in CONFIGS.items():
                times[name] += time_config(width, steps, warmup, **dict(config))
    finally:
        torch.set_num_threads(threads)
    base, base_best = statistics.median(times["ce"]), min(times["ce"])
    rows = [
        {
            "config": name,
            "step_ms": 1e3 * statistics.median(values),
            "spread_ms": f"{1e3 * min(values):.1f}-{1e3 * max(values):.1f}",
            "overhead_pct": 100 * (statistics.median(values) / base - 1),
            "overhead_best_pct": 100 * (min(values) / base_best - 1),
        }
        for name, values in times.items()
    ]
    notes = (
        f"Binary ResNet-18 (CIFAR stem, width {width}), batch 64 of 32x32, CPU, 1 thread, "
        f"Lightning Trainer; thread CPU time per step; {rounds} interleaved rounds of {steps} "
        f"timed steps per config (after {warmup} warm-up steps each); median and min-max over "
        "all of them; overhead_best_pct compares the fastest steps. 'diagnostics idle' logs "
        "only at step 0, a warm-up step."
    )
    return {"title": "Engine tricks: training-step cost", "rows": rows, "notes": notes}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
