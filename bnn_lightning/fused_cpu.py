"""One-pass CPU kernels for the binary training step (bf16, fp16 and fp32).

:mod:`bnn_lightning.fused` computes ``sign(x)`` and the packed codes ``1[x >= 0] + 2 *
1[|x| <= clip]`` with ATen ops, about ten passes over the activations in forward and seven in
backward; on a CPU that is most of what a binary training step costs beyond a float one. These
kernels make one pass each, on the bits of the floats, with the widest vector instructions the CPU
has (:func:`level`, chosen at run time, so one build serves every x86 CPU): AVX-512 BW
(compare masks, 32 elements a step, the masks interleaved into codes with BMI2 ``pdep``/``pext``)
or AVX2 (compares and byte masks), else portable C++ (2-byte floats four to a 64-bit word; fp32 in
blocks of 64 elements that the compiler vectorises). Over one training step's activations of
ResNet-18 (``benchmarks/bench_kernels.py``, 2 threads, AMD EPYC Zen 5), the vector kernels make the
bf16 forward 2-4x and the backward 1.7-2x faster than the portable ones, at about the time of a
``clone`` of the same tensors; fp32 gains less (1.1-1.3x: the portable loop already streams):

* ``sign_codes``: reads ``x``, writes ``sign(x)`` (+-1) and the codes, four to a byte; or, for
  :func:`int8_conv2d`, the sign as the bytes ``2 * 1[x >= 0]`` (an int8 convolution's unsigned
  input with zero point 1).
* ``codes_backward``: reads the codes, writes the +-1 input that the weight gradient needs and
  zeroes the input gradient where ``|x| > clip`` (in place): vector masks from the code bits
  (the portable kernels: two 256-entry tables, a code byte an index).
* ``prelu_backward`` (AVX-512 only; :mod:`bnn_lightning.fused_prelu` uses ATen's ops elsewhere):
  ATen's PReLU backward, ``z > 0 ? g : slope[c] * g`` and the full-size slope gradient
  ``z > 0 ? 0 : z * g``, in one pass over bf16 or fp32 (masked vector loads and stores, no scalar
  tail; bf16 rounded to nearest even as ATen's vector code rounds it).

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
import math
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
    "int8_conv",
    "int8_conv2d",
    "kernels",
    "level",
    "prelu_backward",
    "prelu_usable",
    "sign_codes",
    "usable",
    "weight_grad",
    "weight_signs",
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


def sign_codes(x: Tensor, clip: float, u8: bool = False) -> tuple[Tensor, Tensor]:
    """``(sign(x), packed codes)`` of a dense float tensor, in its memory order. ``u8`` (2-byte
    floats): the sign as ``uint8`` bytes ``2 * 1[x >= 0]``, the input of :func:`int8_conv2d`."""
    if x.dtype == torch.float32:
        assert not u8, "u8 signs are made from 2-byte floats"
        sign, packed = _built().sign_codes_float(x, clip, level())
    else:
        infinity, one = _bits(float("inf"), x.dtype), _bits(1.0, x.dtype)
        bits = _bits(clip, x.dtype)
        sign, packed = _built().sign_codes(x, infinity, bits, one, level(), u8)
    return sign, packed


def codes_backward(packed: Tensor, sign: Tensor | None, grad: Tensor | None) -> None:
    """Write the +-1 input into ``sign`` and zero ``grad`` where ``|x| > clip`` (in place; both
    dense 2-byte floats in the codes' memory order, either may be None)."""
    like = sign if sign is not None else grad
    assert like is not None
    _built().codes_backward(packed, sign, grad, like.numel(), _bits(1.0, like.dtype), level())


def prelu_usable(z: Tensor, grad: Tensor) -> bool:
    """Whether :func:`prelu_backward` handles ``z`` and ``grad``: CPU, AVX-512 kernels, bf16 or
    fp32, the same strides, dense NCHW-contiguous or channels_last (4-D)."""
    return (
        z.device.type == "cpu"
        and z.dtype in (torch.bfloat16, torch.float32)
        and grad.dtype == z.dtype
        and z.dim() >= 2
        and grad.stride() == z.stride()
        and (z.is_contiguous() or (z.dim() == 4 and z.is_contiguous(memory_format=_LAST)))
        and kernels() is not None
        and level() == LEVELS.index("avx512")
    )


def prelu_backward(
    z: Tensor, grad: Tensor, slope: Tensor, weight_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """ATen's PReLU backward in one pass: ``(z > 0 ? grad : slope[c] * grad, z > 0 ? 0 : z *
    grad)``, the second (the full-size slope gradient, before its sum) only if ``weight_grad``;
    ``slope``: one value per channel of ``z`` (dim 1) or one for all. Check
    :func:`prelu_usable` first."""
    slopes = slope.reshape(-1).float().contiguous()
    if slopes.numel() == 1:
        channels, inner = 1, z.numel()
    elif z.is_contiguous():
        channels, inner = z.shape[1], math.prod(z.shape[2:])
    else:  # channels_last
        channels, inner = z.shape[1], 1
    grad_z, full = _built().prelu_backward(z, grad, slopes, channels, inner, weight_grad)
    return grad_z, full if weight_grad else None


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


def weight_signs(w: Tensor) -> Tensor:
    """``+1`` or ``-1`` as ``int8`` from the sign bit of each element of a 2-byte float tensor
    (a binary weight ``+-scale[c]``; ``+0.0`` gives ``+1``), in ``w``'s layout."""
    return _built().weight_signs(w)


def int8_conv2d(
    u8: Tensor,
    signs: Tensor,
    scale: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """``conv2d(2 * u8 - 1 (zero padding), scale[c] * signs)`` in bf16, by oneDNN's int8
    convolution: ``u8`` the bytes of :func:`sign_codes` (``uint8``, zero point 1), ``signs`` the
    ``int8`` +-1 weight, ``scale`` its per-output-channel fp32 scale. Exactly the bf16
    convolution's output (see :func:`int8_conv`)."""
    channels = signs.shape[0]
    ones = torch.ones(channels)
    # zero point 0 here: oneDNN then applies the input's zero point in the convolution itself,
    # with the same result, instead of precomputing it into the weight (3x slower at 512x512x3x3)
    packed = torch.ops.onednn.qconv_prepack(signs, ones, 1.0, 0, stride, padding, dilation, groups)
    zero_points = torch.zeros(channels, dtype=torch.int64)
    return torch.ops.onednn.qconv2d_pointwise(
        u8, 1.0, 1, packed, scale, zero_points, None, stride, padding, dilation, groups,
        1.0, 0, torch.bfloat16, "none", [], "",
    )  # fmt: skip


def _int8_probe() -> str | None:
    """None when :func:`int8_conv2d` equals the bf16 convolution on small cases (zero padding,
    strides, groups, dilation, channels_last), else why not."""
    generator = torch.Generator().manual_seed(0)
    try:
        for stride, padding, dilation, groups in ((1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2)):
            x = torch.randn(2, 8, 7, 7, generator=generator).to(memory_format=_LAST)
            w = torch.randn(6, 8 // groups, 3, 3, generator=generator)
            scale = w.abs().mean(dim=(1, 2, 3), keepdim=True).to(torch.bfloat16)
            weight = binary_weight(w, scale).to(memory_format=_LAST)
            u8, _ = sign_codes(x.to(torch.bfloat16), 1.0, u8=True)
            sign = u8.to(torch.bfloat16).sub_(1)
            conv = ([stride] * 2, [padding] * 2, [dilation] * 2, groups)
            expected = torch.nn.functional.conv2d(sign, weight, None, *conv)
            got = int8_conv2d(u8, weight_signs(weight), scale.float().reshape(-1), *conv)
            if not torch.equal(got, expected) or got.stride() != expected.stride():
                return "its output differs from the bf16 convolution's"
    except (AttributeError, RuntimeError) as error:  # an older torch, a build without oneDNN
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return None


@functools.cache
def int8_conv() -> bool:
    """Whether the binary conv's forward runs as an int8 convolution: a ``+-1`` input times a
    ``+-scale[c]`` weight (``MagnitudeAwareSign``) is an integer times ``scale[c]``, which an
    int8 convolution (oneDNN's, through ``torch.ops.onednn``) computes in int32 and a bf16 one
    in fp32, both exactly; each rounds it once to bf16, so the outputs are the same bits, at
    about half the bf16 convolution's time on a CPU with VNNI (int8 dot products, twice as many
    a cycle as bf16's). Backward is unchanged (its gradients are not binary).

    ``BNN_INT8_CONV``: ``auto`` (default) on CPUs with VNNI, ``1`` on any CPU (oneDNN has int8
    kernels for AVX2 too), ``0`` never. A check on small convolutions runs first; where it fails
    (an older torch, a build without oneDNN) the bf16 convolution stays, with a warning.
    """
    setting = os.environ.get("BNN_INT8_CONV", "auto")
    if setting not in ("auto", "0", "1"):
        raise ValueError(f"Unknown BNN_INT8_CONV={setting!r}; use auto, 0 or 1.")
    if setting == "0" or kernels() is None:
        return False
    if setting == "auto" and not getattr(torch.cpu, "_is_vnni_supported", lambda: False)():
        return False
    problem = _int8_probe()
    if problem is not None:
        rank_zero_warn(f"Int8 binary convolutions unavailable ({problem}); using bf16 ones.")
        return False
    rank_zero_info("Binary convolutions: int8 forward (oneDNN, VNNI), bf16 backward.")
    return True
