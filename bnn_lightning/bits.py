"""Bit packing of {-1, +1} tensors and a SWAR popcount, the primitives of 1-bit export.

Encoding: bit 1 means +1 and bit 0 means -1; a value maps to 1 when it is ``>= 0``, so a real
tensor packs to the bits of :func:`~bnn_lightning.quantizers.binary_sign` (``sign(0) = +1``).

Bit order ("little"): element ``i`` of the packed sequence goes to word ``i // B``, bit ``i % B``,
bit 0 being the least significant bit of the word. Word sizes: ``torch.uint8`` (B = 8, the same
bytes as ``numpy.packbits(..., bitorder="little")``) and ``torch.int64`` (B = 64, two's complement,
so bit 63 is the sign bit). The last word of a sequence is padded with 0 bits. With ``dim=None``
the sequence is the whole tensor flattened in row-major (C) order; with ``dim=d`` each line along
``d`` packs on its own and the words take that dimension's place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BIT_ORDER", "WORD_BITS", "pack_bits", "packed_words", "popcount64", "unpack_bits"]

BIT_ORDER = "little"
WORD_BITS: dict[torch.dtype, int] = {torch.uint8: 8, torch.int64: 64}


def _word_bits(dtype: torch.dtype) -> int:
    if dtype not in WORD_BITS:
        raise ValueError(f"Unsupported word dtype {dtype}; use torch.uint8 or torch.int64.")
    return WORD_BITS[dtype]


def packed_words(n: int, dtype: torch.dtype = torch.uint8) -> int:
    """Number of words that hold ``n`` bits."""
    return math.ceil(n / _word_bits(dtype))


def pack_bits(
    t: Tensor, dtype: torch.dtype = torch.uint8, dim: int | None = None
) -> tuple[Tensor, torch.Size]:
    """Pack the signs of ``t`` to one bit per element (order and encoding in the module doc).

    Args:
        t: Any real tensor; ``t >= 0`` packs to 1 (+1), the rest to 0 (-1).
        dtype: Word type, ``torch.uint8`` or ``torch.int64``.
        dim: Pack along this dimension only; None packs the whole tensor as one sequence.

    Returns:
        The words (1-D for ``dim=None``, else ``t``'s shape with ``dim`` resized to the number
        of words) and ``t.shape``, which :func:`unpack_bits` needs.
    """
    bits_per_word = _word_bits(dtype)
    line = t.reshape(-1) if dim is None else t.movedim(dim, -1)
    bits = F.pad((line >= 0).to(dtype), (0, (-line.shape[-1]) % bits_per_word))
    shifts = torch.arange(bits_per_word, dtype=dtype, device=t.device)
    # Distinct powers of two never carry, so the sum is their bitwise OR (bit 63 included).
    words = (bits.unflatten(-1, (-1, bits_per_word)) << shifts).sum(-1, dtype=dtype)
    return (words if dim is None else words.movedim(-1, dim)), t.shape


def unpack_bits(
    words: Tensor,
    shape: torch.Size | tuple[int, ...],
    dim: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Inverse of :func:`pack_bits`: the {-1, +1} tensor of ``shape`` in ``dtype``.

    Raises:
        ValueError: ``words`` does not hold exactly the words ``shape`` needs.
    """
    shape = torch.Size(shape)
    bits_per_word = _word_bits(words.dtype)
    line = words if dim is None else words.movedim(dim, -1)
    n = shape.numel() if dim is None else shape[dim]
    expected = packed_words(n, words.dtype)
    if line.shape[-1] != expected or (dim is not None and words.dim() != len(shape)):
        raise ValueError(
            f"Packed words of shape {tuple(words.shape)} do not match shape {tuple(shape)}"
            f" (expected {expected} {words.dtype} words per line);"
            " pass the shape that pack_bits returned."
        )
    shifts = torch.arange(bits_per_word, dtype=words.dtype, device=words.device)
    bits = ((line.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :n]
    values = bits.to(dtype) * 2 - 1
    return values.reshape(shape) if dim is None else values.movedim(-1, dim)


_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F


def popcount64(x: Tensor) -> Tensor:
    """Number of set bits of each int64 word (SWAR bit count; torch has no popcount op).

    Adds bit pairs, nibbles and bytes in parallel inside the word, then folds the eight byte
    counts with shifts (Warren, "Hacker's Delight", 5-1). Elementwise, so ``torch.compile``
    fuses it into the surrounding XOR and reduction.
    """
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return x & 0x7F
