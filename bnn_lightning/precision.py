"""``precision: auto``: bf16 autocast where the hardware computes bf16 natively, else not.

bf16 autocast halves the bytes of every activation and, on hardware with bf16 arithmetic, about
doubles the speed of a convolution (the ``make bench`` report: bf16 + channels_last against fp32
eager). On a CPU without it, such as an AVX2-only x86 (most laptops, AMD Zen 3 servers), oneDNN
has no bf16 convolution kernels and falls back to reference code: a training step of the binary
ResNet-18 (CIFAR stem, width 64, batch 128) took 70 s there against 8.6 s in fp32.
``precision: auto`` therefore picks, once, when the trainer is built:

- ``bf16-mixed`` on a CPU with native bf16 (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``:
  AVX-512 with BF16 / AMX on x86, bf16 on Arm) or a CUDA GPU with bf16 (Ampere and newer);
- ``16-mixed`` on an older CUDA GPU (fp16 with a gradient scaler);
- ``32-true`` otherwise (a CPU without bf16, MPS, other accelerators).

An explicit ``bf16-mixed`` on a CPU without native bf16 is kept, with a one-line warning.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.accelerators import Accelerator, CPUAccelerator, CUDAAccelerator

__all__ = [
    "PrecisionInput",
    "auto_precision",
    "cpu_bf16",
    "device_type",
    "native_bf16",
    "resolve_precision",
    "slow_bf16_warning",
]

PrecisionInput = _PRECISION_INPUT | Literal["auto"]


def device_type(accelerator: str | Accelerator | None) -> str:
    """``cpu``, ``cuda`` or ``other``: the device a trainer's ``accelerator`` runs on
    (``auto`` / ``gpu``: CUDA when available, else the CPU, or ``other`` for Apple's MPS)."""
    if isinstance(accelerator, CPUAccelerator):
        return "cpu"
    if isinstance(accelerator, CUDAAccelerator):
        return "cuda"
    if isinstance(accelerator, Accelerator):
        return "other"
    name = "auto" if accelerator is None else str(accelerator).lower()
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "other"
        return "cpu" if name == "auto" else "other"
    return {"cpu": "cpu", "cuda": "cuda"}.get(name, "other")


def cpu_bf16() -> bool:
    """Whether this CPU has bf16 kernels in oneDNN (AVX-512 / AMX on x86, bf16 on Arm)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16(device: str) -> bool:
    """Whether ``device`` (``cpu`` / ``cuda``) computes bf16 in hardware, not by emulation."""
    if device == "cpu":
        return cpu_bf16()
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return False


def auto_precision(device: str) -> Literal["bf16-mixed", "16-mixed", "32-true"]:
    """The precision ``auto`` stands for on ``device`` (see the module's docstring)."""
    if native_bf16(device):
        return "bf16-mixed"
    return "16-mixed" if device == "cuda" else "32-true"


def resolve_precision(
    precision: PrecisionInput | None, accelerator: str | Accelerator | None
) -> tuple[_PRECISION_INPUT | None, str | None]:
    """``auto`` resolved for the device, with the line to log; any other value as it is."""
    if precision != "auto":
        return precision, None
    chosen = auto_precision(device := device_type(accelerator))
    why = "native bf16" if chosen == "bf16-mixed" else f"no native bf16 on this {device}"
    return chosen, f"precision: auto -> {chosen} ({why})"


def slow_bf16_warning(
    precision: PrecisionInput | None, accelerator: str | Accelerator | None
) -> str | None:
    """The one-line warning for an explicit bf16 precision on a CPU without native bf16."""
    if not str(precision).startswith("bf16") or device_type(accelerator) != "cpu" or cpu_bf16():
        return None
    return (
        f"precision {precision} on a CPU without native bf16 "
        f"({torch.backends.cpu.get_cpu_capability()}): its convolutions run on reference code, "
        "about 8x slower than 32-true; set precision: auto or 32-true."
    )
