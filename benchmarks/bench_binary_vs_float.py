"""Binary vs float: the cost of the quantizers in time and in peak memory.

1. A stack of ``BN -> BinaryConv2d(3x3)`` layers, forward + backward, with the quantizers on
   (``binary``) and off (``float``, the same modules: ``conv2d`` on the raw input and weight).
2. One training step (forward, cross-entropy, backward, Adam) of the default binary ResNet-18
   (CIFAR stem, width 64) against the same network with quantizers off, in fp32 eager and in
   the quickstart's setting: bf16 autocast + channels_last, or fp32 + channels_last on a CPU
   without native bf16 (``precision: auto`` trains in fp32 there; see
   :mod:`bnn_lightning.precision`). Where the binary conv's forward runs as an int8 convolution
   (:func:`bnn_lightning.fused_cpu.int8_conv`), the bf16 setting has a third row, ``binary, bf16
   forward conv``: the same binary network with it turned off.

Time is the median of several repeats after a warm-up, binary and float interleaved so that load
from other processes hits both alike; the spread is the min-max range; ``cpu_ms`` is the median
process CPU time of a step (without the waits for cores other processes hold; with one torch
thread, the work itself), ``cpu_ratio`` its binary / float ratio. Memory is the peak of the
bytes allocated during one step (activations kept for backward in whatever dtype they are saved,
gradients, temporaries; the model, the input and Adam's state exist before and are not counted),
tracked op by op with a ``TorchDispatchMode``: exact and deterministic, unlike RSS on a shared
machine. ``binary, bf16 forward conv`` (where the int8 forward convolution runs): the binary step
with it turned off, interleaved with the other two. Targets (``targets.py``): binary <= 1.05x the
float time in the quickstart's setting, the binary step in that setting >= 3x the images/s of the
fp32 eager float one, binary peak memory <= 0.8x.

``python benchmarks/bench_binary_vs_float.py [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from targets import BF16_CONV
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bnn_lightning import fused_cpu
from bnn_lightning.layers import BinaryConv2d, set_mode
from bnn_lightning.models import create_model
from bnn_lightning.precision import cpu_bf16

Step = Callable[[], None]


class PeakMemory(TorchDispatchMode):
    """Peak bytes of the storages allocated while active (the live ones at the worst moment).

    Every aten op's outputs pass through here, below autograd and autocast, so the activations
    kept for backward (whatever dtype a saved-tensor hook packs them in), gradients and
    temporaries are all seen. A storage counts from the op that creates it until it is freed
    (a weakref finalizer); outputs that alias an input (views, in-place ops) are not new.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = tree_flatten((args, kwargs))[0]
        seen = {_address(t) for t in inputs if isinstance(t, Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or _address(t) in seen:
                continue
            seen.add(_address(t))
            # an opaque oneDNN tensor (the int8 convolution's packed weight) has no storage
            owner = t if t.is_mkldnn else t.untyped_storage()
            nbytes = t.numel() * t.element_size() if t.is_mkldnn else owner.nbytes()
            self.live += nbytes
            weakref.finalize(owner, self._free, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def _address(t: Tensor) -> int:
    """The address of ``t``'s storage; an opaque tensor's identity."""
    return id(t) if t.is_mkldnn else t.untyped_storage().data_ptr()


def peak_bytes(step: Step) -> int:
    """Peak memory allocated during one call of ``step`` (run it once before: Adam's state)."""
    with PeakMemory() as tracker:
        step()
    return tracker.peak


Times = dict[str, list[float]]


def timed(steps: dict[str, Step], repeats: int, warmup: int = 1) -> tuple[Times, Times]:
    """Wall and process-CPU seconds of each step, ``warmup`` untimed then ``repeats`` timed
    rounds, interleaved. CPU time leaves out the waits for cores that other processes hold."""
    wall: Times = {name: [] for name in steps}
    cpu: Times = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            if i >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def time_row(setting: str, mode: str, wall: list[float], cpu: list[float], work: int) -> dict:
    """Median, min-max spread and images/s of the wall times; median CPU time."""
    median = statistics.median(wall)
    return {
        "setting": setting,
        "mode": mode,
        "median_ms": 1e3 * median,
        "spread_ms": f"{1e3 * min(wall):.0f}-{1e3 * max(wall):.0f}",
        "cpu_ms": 1e3 * statistics.median(cpu),
        "items_per_s": work / median,
    }


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Binary / float ratios on each binary row (the float row's mode is ``float``)."""
    float_ = next(row for row in rows if row["mode"] == "float")
    for row in rows:
        if row is float_:
            continue
        row["time_ratio"] = row["median_ms"] / float_["median_ms"]
        row["cpu_ratio"] = row["cpu_ms"] / float_["cpu_ms"]
        if "peak_MB" in row:
            row["memory_ratio"] = row["peak_MB"] / float_["peak_MB"]
    return rows


def _compare(setting: str, steps: dict[str, Step], work: int, repeats: int) -> list[dict[str, Any]]:
    wall, cpu = timed(steps, repeats)
    rows = [time_row(setting, name, wall[name], cpu[name], work) for name in steps]
    for row, step in zip(rows, steps.values(), strict=True):
        row["peak_MB"] = peak_bytes(step) / 2**20
    return add_ratios(rows)


def conv_stack(depth: int, channels: int) -> nn.Sequential:
    """``depth`` x (BatchNorm -> binary 3x3 conv)."""
    return nn.Sequential(
        *(
            nn.Sequential(nn.BatchNorm2d(channels), BinaryConv2d(channels, channels, 3, padding=1))
            for _ in range(depth)
        )
    )


def stack_rows(quick: bool) -> list[dict[str, Any]]:
    """Forward + backward of 8 x (BN -> binary 3x3 conv), 64 channels, 32x32, batch 64."""
    batch, repeats = (16, 3) if quick else (64, 9)
    x = torch.randn(batch, 64, 32, 32)
    models = {"binary": conv_stack(8, 64), "float": conv_stack(8, 64)}
    models["float"].load_state_dict(models["binary"].state_dict())
    set_mode(models["float"], "float")

    def step(model: nn.Module) -> Step:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model(x).mean().backward()

        return run

    steps = {name: step(model) for name, model in models.items()}
    setting = f"8x(BN, conv3x3 64ch) 32x32 batch {batch} fwd+bwd"
    return _compare(setting, steps, batch, repeats)


def train_step(model: nn.Module, x: Tensor, y: Tensor, bf16: bool) -> Step:
    """One Adam step on ``(x, y)``, in bf16 autocast when asked."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return run


@contextlib.contextmanager
def _int8_off() -> Iterator[None]:
    """The binary conv's forward as a bf16 convolution (``fused_cpu.int8_conv`` answers no)."""
    answer = fused_cpu.int8_conv
    fused_cpu.int8_conv = lambda: False
    try:
        yield
    finally:
        fused_cpu.int8_conv = answer


def _bf16_conv(step: Step) -> Step:
    def run() -> None:
        with _int8_off():
            step()

    return run


def quickstart_setting() -> tuple[str, bool]:
    """The quickstart's precision and memory format on this CPU: ``(label, bf16)``."""
    if cpu_bf16():
        return "bf16 autocast + channels_last", True
    return "fp32 + channels_last (no native bf16 on this CPU)", False


def resnet_rows(quick: bool) -> list[dict[str, Any]]:
    """Training step of the default binary ResNet-18 (CIFAR stem) vs quantizers off."""
    batch, repeats = (16, 2) if quick else (128, 12)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rows = []
    settings = [("fp32 eager", False, torch.contiguous_format)]
    label, bf16 = quickstart_setting()
    settings.append((label, bf16, torch.channels_last))
    for label, bf16, fmt in settings:
        models = {
            mode: create_model("resnet18_cifar", num_classes=10, mode=mode).to(memory_format=fmt)
            for mode in ("binary", "float")
        }
        xs = x.to(memory_format=fmt)
        steps = {name: train_step(m, xs, y, bf16) for name, m in models.items()}
        if bf16 and fmt == torch.channels_last and fused_cpu.int8_conv():
            model = create_model("resnet18_cifar", num_classes=10, mode="binary")
            model.load_state_dict(models["binary"].state_dict())
            model = model.to(memory_format=fmt)
            steps[BF16_CONV] = _bf16_conv(train_step(model, xs, y, bf16))
        setting = f"ResNet-18 cifar w64 batch {batch} train step, {label}"
        rows += _compare(setting, steps, batch, repeats)
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """Both comparisons; ``quick`` shrinks the batches and repeats."""
    torch.manual_seed(0)
    rows = stack_rows(quick) + resnet_rows(quick)
    return {
        "title": "Binary vs float: time and peak memory of a training step (CPU)",
        "rows": rows,
        "notes": __doc__.split("\n\n")[2].replace("\n", " ") if __doc__ else "",
        "plot": {
            "label": "binary / float time",
            "values": {r["setting"]: r["time_ratio"] for r in rows if "time_ratio" in r},
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
