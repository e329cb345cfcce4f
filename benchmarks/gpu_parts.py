"""The measurements of ``gpu_check.py``, each a function that returns a JSON-able dict.

- :func:`throughput`: training-step images/s of the binary ResNet-18 and of the same net with its
  quantizers off (float), eager and compiled, in bf16 autocast + channels_last.
- :func:`data_path`: images/s that the training data path delivers to the device, measured
  through a Lightning ``Trainer`` whose step does nothing: the loader, the transfer, and the
  batch hooks (for the in-memory CIFAR pipeline: gather, augmentation and normalization on the
  device, :mod:`bnn_lightning.data.device`).
- :func:`real_run`: ``configs/cifar10/gpu.yaml`` trained for a number of epochs, with the
  validation top-1 after each epoch and the time.

Each takes :class:`Sizes` (the full sizes, or toy ones for ``--dry-run`` on a CPU) and writes
partial results through ``save`` as it goes, so a part stopped at its time box still reports
what it measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from bnn_lightning.cli import BNNCLI
from bnn_lightning.models import create_model

Save = Callable[[dict[str, Any]], None]
ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIG = ROOT / "configs" / "cifar10" / "gpu.yaml"


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the real one, or a toy one for a CPU dry run."""

    width: int = 64
    batch: int = 512
    steps: int = 10  # training steps per timed round
    rounds: int = 5  # timed rounds, binary and float interleaved
    warmup: int = 3  # untimed steps of each net first
    backend: str = "inductor"  # torch.compile backend
    data_batches: int = 40  # timed batches of the data path
    accelerator: str = "gpu"


FULL = Sizes()
DRY = Sizes(
    width=8, batch=16, steps=2, rounds=2, warmup=1, backend="aot_eager", data_batches=3,
    accelerator="cpu",
)  # fmt: skip


def device_of(sizes: Sizes) -> torch.device:
    return torch.device("cuda" if sizes.accelerator == "gpu" else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(net: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One Adam step (forward in bf16 autocast, cross-entropy, backward) on ``(x, y)``."""
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()

    return step


def _timed_rounds(
    steps: dict[str, Callable[[], None]], sizes: Sizes, device: torch.device
) -> dict[str, dict[str, Any]]:
    """Images/s of each step: median over interleaved rounds of ``sizes.steps`` steps."""
    for _ in range(sizes.warmup):
        for step in steps.values():
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(sizes.rounds):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(sizes.steps):
                step()
            synchronize(device)
            rates[name].append(sizes.steps * sizes.batch / (time.perf_counter() - start))
    return {
        name: {
            "images_per_s": statistics.median(r),
            "spread": f"{min(r):.0f}-{max(r):.0f}",
            "step_ms": 1e3 * sizes.batch / statistics.median(r),
        }
        for name, r in rates.items()
    }


def _peak_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def throughput(sizes: Sizes, save: Save, modes: tuple[bool, ...] = (False, True)) -> dict[str, Any]:
    """Binary vs float ResNet-18 (CIFAR stem) training steps, eager then compiled (``modes``)."""
    device = device_of(sizes)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    x = torch.randn(sizes.batch, 3, 32, 32, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (sizes.batch,), device=device)
    result: dict[str, Any] = {"batch": sizes.batch, "width": sizes.width, "eager": {}}
    for compiled in modes:
        steps, compile_s = {}, {}
        for mode in ("binary", "float"):
            net = create_model("resnet18_cifar", num_classes=10, width=sizes.width, mode=mode)
            net = net.to(device, memory_format=torch.channels_last)
            runner = torch.compile(net, backend=sizes.backend) if compiled else net
            steps[mode] = train_step(runner, x, y)
            if compiled:  # the first call compiles forward and backward
                start = time.perf_counter()
                steps[mode]()
                synchronize(device)
                compile_s[mode] = time.perf_counter() - start
                result["compile_s"] = compile_s
                save(result)
        key = "compiled" if compiled else "eager"
        result[key] = _timed_rounds(steps, sizes, device)
        if not compiled:
            for mode, step in steps.items():
                result[key][mode]["peak_bytes"] = _peak_bytes(step, device)
        rates = result[key]
        result[key]["binary_over_float_time"] = (
            rates["float"]["images_per_s"] / rates["binary"]["images_per_s"]
        )
        save(result)
    return result


class _DataProbe(L.LightningModule):
    """A module whose training step does nothing: the loop only fetches and moves batches."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.anchor = nn.Parameter(torch.zeros(1))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def configure_optimizers(self) -> Any:
        return None


class _BatchClock(L.Callback):
    """Time from the batch after the warm-up to the last one, the device synchronized."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0
        self.images = self.batches = 0
        self.batch: dict[str, Any] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if batch_idx == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()
            images = batch[0]
            self.batch = {"device": images.device.type, "dtype": str(images.dtype)}
            self.batch["shape"] = list(images.shape)
        elif batch_idx > self.warmup:
            self.images += len(batch[0])
            self.batches += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        synchronize(self.device)
        self.end = time.perf_counter()


def _cli(args: list[str]) -> BNNCLI:
    return BNNCLI(args=["--config", str(GPU_CONFIG), *args], run=False)


def data_path(sizes: Sizes, data_args: list[str], save: Save) -> dict[str, Any]:
    """Images/s of ``gpu.yaml``'s training data path on the device (``data_args``: overrides)."""
    device = device_of(sizes)
    datamodule = _cli(data_args).datamodule
    clock = _BatchClock(warmup=2, device=device)
    trainer = L.Trainer(  # the probe never steps an optimizer: count batches, not steps
        accelerator=sizes.accelerator, devices=1, max_epochs=1,
        limit_train_batches=clock.warmup + 1 + sizes.data_batches, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(_DataProbe(), datamodule=datamodule)
    result = {
        "images_per_s": clock.images / (clock.end - clock.start),
        "batches": clock.batches,
        "batch": clock.batch,
        "datamodule": type(datamodule).__name__,
        "train_images": len(datamodule.train_set),  # type: ignore[arg-type]
        "val_images": len(datamodule.val_set),  # type: ignore[arg-type]
    }
    images = getattr(getattr(datamodule, "device_images", None), "images", None)
    if images is not None:  # the device-side path: where the uint8 tensor ended up
        result["uint8_images_on"] = images.device.type
    save(result)
    return result


class _EpochLog(L.Callback):
    """Seconds since the start of ``fit`` and the validation metrics after every epoch."""

    def __init__(self, save: Callable[[list[dict[str, Any]]], None]) -> None:
        self.save, self.start, self.epochs = save, 0.0, []  # type: ignore[var-annotated]

    def on_train_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1, "seconds": time.perf_counter() - self.start}
        for key in ("val/acc_top1", "val/acc_top5", "val/loss", "train/loss"):
            if key in metrics:
                row[key] = float(metrics[key])
        self.epochs.append(row)
        self.save(self.epochs)


def real_run(run_args: list[str], save: Save) -> dict[str, Any]:
    """``bnn fit --config configs/cifar10/gpu.yaml <run_args>``, timed, epoch by epoch."""
    start = time.perf_counter()
    result: dict[str, Any] = {"args": run_args}
    log = _EpochLog(lambda epochs: save({**result, "epochs": epochs}))
    cli = _cli(run_args)
    cli.trainer.callbacks.append(log)
    result["setup_s"] = time.perf_counter() - start
    fit_start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result["fit_s"] = time.perf_counter() - fit_start
    result["max_epochs"] = cli.trainer.max_epochs
    result["epochs_done"] = len(log.epochs)
    result["steps"] = cli.trainer.global_step
    result["stopped_early"] = len(log.epochs) < (cli.trainer.max_epochs or 0)
    if result["stopped_early"]:  # max_time stopped it inside an epoch: validate where it is
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = cli.trainer.callback_metrics
    result["final"] = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
    result["epochs"] = log.epochs
    result["wall_s"] = time.perf_counter() - start
    save(result)
    return result


def prepare(data_args: list[str]) -> dict[str, Any]:
    """Extract the archive and decode it into the in-memory tensor cache (CPU work only)."""
    start = time.perf_counter()
    datamodule = _cli(data_args).datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    return {"seconds": time.perf_counter() - start, "train_images": len(datamodule.train_set)}


def write_toy_tree(root: Path, per_class: int = 12, classes: int = 10) -> Path:
    """A learnable ImageFolder tree for the dry run: class ``k`` is one colour plus noise."""
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 216, (classes, 3))
    for k in range(classes):
        folder = root / "train" / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(palette[k] + rng.integers(-40, 41, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root
