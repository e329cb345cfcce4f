"""One-pass CPU kernels for the binary training step (bf16, fp16 and fp32).

:mod:`bnn_lightning.fused` computes ``sign(x)`` and the packed codes ``1[x >= 0] + 2 *
1[|x| <= clip]`` with ATen ops, about ten passes over the activations in forward and seven in
backward; on a CPU that is most of what a binary training step costs beyond a float one. These two
kernels make one pass each, on the bits of the floats, with the widest vector instructions the
CPU has (:func:`level`, chosen at run time, so one build serves every x86 CPU): AVX-512 BW
(compare masks, 32 elements a step, the masks interleaved into codes with BMI2 ``pdep``/``pext``)
or AVX2 (compares and byte masks), else portable C++ (2-byte floats four to a 64-bit word; fp32 in
blocks of 64 elements that the compiler vectorises). Over one training step's activations of
ResNet-18 (``benchmarks/bench_kernels.py``, 2 threads, AMD EPYC Zen 5), the vector kernels make the
bf16 forward 2-4x and the backward 1.7-2x faster than the portable ones, at about the time of a
``clone`` of the same tensors; fp32 gains less (1.1-1.3x: the portable loop already streams):

* ``sign_codes``: reads ``x``, writes ``sign(x)`` (+-1) and the codes, four to a byte.
* ``codes_backward``: reads the codes, writes the +-1 input that the weight gradient needs and
  zeroes the input gradient where ``|x| > clip`` (in place): vector masks from the code bits
  (the portable kernels: two 256-entry tables, a code byte an index).

Exactly the values of the ATen path (tested bit for bit): ``x >= 0`` is true for ``+-0`` and
false for NaN, ``|x| <= clip`` compares with ``clip`` rounded to the dtype, as ATen does.

They are built from ``csrc/fused_cpu.cpp`` once per machine with ``torch.utils.cpp_extension.load``
(a C++ compiler is needed; about a minute; cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``). Without a compiler, or with ``BNN_CPU_KERNELS=0``, the ATen path
runs instead, with the same values. ``BNN_CPU_KERNELS=portable`` (or ``avx2``) caps the level, to
compare or to rule the vector kernels out.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

__all__ = [
    "LEVELS",
    "binary_weight",
    "codes_backward",
    "kernels",
    "level",
    "sign_codes",
    "usable",
    "weight_grad",
    "weights_usable",
]

_SOURCE = Path(__file__).with_name("csrc") / "fused_cpu.cpp"
_DTYPES = (torch.bfloat16, torch.float16)
_FLOATS = (*_DTYPES, torch.float32)
_LAST = torch.channels_last  # keeps the output channel outermost in memory
LEVELS = ("portable", "avx2", "avx512")  # the kernels' instruction sets, by level


@functools.cache
def kernels() -> Any | None:
    """The compiled kernels, built on first use; None where they cannot be (see the module)."""
    if os.environ.get("BNN_CPU_KERNELS", "1") == "0" or sys.byteorder != "little":
        return None
    from torch.utils.cpp_extension import load

    rank_zero_info("Loading the fused binary-conv CPU kernels (built once per machine: a minute).")
    try:
        # -fopenmp: at::parallel_for splits the work over torch's threads (torch's libgomp)
        return load(
            "bnn_lightning_fused_cpu",
            [str(_SOURCE)],
            extra_cflags=["-O3", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as error:  # no compiler, no write access: the ATen path does the same
        rank_zero_warn(f"Fused CPU kernels unavailable ({type(error).__name__}); using ATen ops.")
        return None


@functools.cache
def level() -> int:
    """The kernels this CPU runs, an index of :data:`LEVELS`: 2 with AVX-512 BW and BMI2, 1 with
    AVX2, else 0 (every level gives the same bits; tests run each one the CPU has), capped by
    ``BNN_CPU_KERNELS`` when it names a level."""
    best = int(_built().best_level())
    cap = os.environ.get("BNN_CPU_KERNELS", "1")
    if cap not in ("0", "1", *LEVELS):
        choices = ", ".join(("0", "1", *LEVELS))
        raise ValueError(f"Unknown BNN_CPU_KERNELS={cap!r}; use one of {choices}.")
    chosen = min(best, LEVELS.index(cap)) if cap in LEVELS else best
    rank_zero_info(f"Fused CPU kernels: {LEVELS[chosen]} (this CPU runs up to {LEVELS[best]}).")
    return chosen


def _built() -> Any:
    module = kernels()
    if module is None:
        raise RuntimeError("The fused CPU kernels are not built; check usable() first.")
    return module


@functools.cache
def _bits(value: float, dtype: torch.dtype) -> int:
    ints = torch.int16 if torch.finfo(dtype).bits == 16 else torch.int32
    return int(torch.tensor(value, dtype=dtype).view(ints))


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernels handle ``dtype`` tensors on ``device`` (CPU; bf16, fp16 or fp32)
    and are built (the first call builds them)."""
    return device.type == "cpu" and dtype in _FLOATS and kernels() is not None


def sign_codes(x: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """``(sign(x), packed codes)`` of a dense float tensor, in its memory order."""
    if x.dtype == torch.float32:
        sign, packed = _built().sign_codes_float(x, clip, level())
    else:
        infinity, one = _bits(float("inf"), x.dtype), _bits(1.0, x.dtype)
        sign, packed = _built().sign_codes(x, infinity, _bits(clip, x.dtype), one, level())
    return sign, packed


def codes_backward(packed: Tensor, sign: Tensor | None, grad: Tensor | None) -> None:
    """Write the +-1 input into ``sign`` and zero ``grad`` where ``|x| > clip`` (in place; both
    dense 2-byte floats in the codes' memory order, either may be None)."""
    like = sign if sign is not None else grad
    assert like is not None
    _built().codes_backward(packed, sign, grad, like.numel(), _bits(1.0, like.dtype), level())


def weights_usable(w: Tensor, dtype: torch.dtype) -> bool:
    """Whether :func:`binary_weight` handles ``w`` (fp32 on CPU, output channel outermost in
    memory) for a ``dtype`` of bf16, fp16 or fp32, and the kernels are built."""
    return (
        w.device.type == "cpu"
        and w.dtype == torch.float32
        and dtype in _FLOATS
        and w.dim() > 0
        and (w.is_contiguous() or (w.dim() == 4 and w.is_contiguous(memory_format=_LAST)))
        and kernels() is not None
    )


def binary_weight(w: Tensor, scale: Tensor) -> Tensor:
    """``+scale[c]`` where ``w >= 0`` (``-0.0`` included), else ``-scale[c]``, in ``scale``'s
    dtype and ``w``'s layout (``scale``: one value per output channel)."""
    ints = torch.int16 if scale.element_size() == 2 else torch.int32
    bits = scale.reshape(-1).contiguous().view(ints)
    return _built().binary_weight(w, bits).view(scale.dtype)


def weight_grad(grad: Tensor, w: Tensor, scale: Tensor, clip: float) -> Tensor:
    """``float(grad) * scale[c] * 1[|w| <= clip]`` in fp32 (``grad`` in ``w``'s layout)."""
    return _built().weight_grad(grad, w, scale.reshape(-1).contiguous(), clip)
