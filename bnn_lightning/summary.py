"""Model summary at true bit-width: parameters, packed size, BOPs and FLOPs.

``summary(model, (3, 224, 224))`` runs one forward pass with a hook on every module that owns
parameters or has no children, so any model works, not only the ones in this package. Per layer
it reports the precision of the input and of the weight (from the ``input_precision`` /
``weight_precision`` attributes of :class:`~bnn_lightning.layers.BinaryConv2d` and friends;
anything else is 32-bit), parameters by bit-width, memory at that bit-width, and its
multiply-accumulates split into

* BOPs: MACs where both input and weight are 1-bit (XNOR + popcount),
* FLOPs: every other MAC,

with ``OPs = BOPs / 64 + FLOPs``, the convention of Bi-Real Net (Liu et al., ECCV 2018) and
ReActNet (Liu et al., ECCV 2020). As in those papers only convolution and linear MACs count:
BatchNorm, PReLU, pooling, sign, residual additions and gate multiplications are elementwise
(O(activations), not O(MACs)) and are left out. Counts are per image.

Packed size stores 1-bit weights at 1 bit and every other parameter at 32 bits, plus one 32-bit
scale per output channel for weight quantizers with a ``scale`` (``MagnitudeAwareSign``), which an
inference engine must keep. BatchNorm running statistics (buffers) are not counted, as in the
papers' model sizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LayerSummary", "ModelSummary", "summary"]


@dataclass
class LayerSummary:
    """One module: its precisions, parameters by bit-width and per-image MACs."""

    name: str
    kind: str
    input_bits: int
    weight_bits: int
    params_binary: int = 0
    params_float: int = 0
    scales: int = 0
    output_shape: tuple[int, ...] = ()
    bops: int = 0
    flops: int = 0

    @property
    def memory_bytes(self) -> float:
        """Parameter memory at true bit-width (binary weights at 1 bit, the rest at 32)."""
        return self.params_binary / 8 + (self.params_float + self.scales) * 4


@dataclass
class ModelSummary:
    """Per-layer rows and totals; ``str()`` prints a table, :meth:`to_dict` gives the totals."""

    input_size: tuple[int, ...]
    layers: list[LayerSummary] = field(default_factory=list)

    def _sum(self, attr: str) -> int:
        return sum(getattr(layer, attr) for layer in self.layers)

    @property
    def params_binary(self) -> int:
        return self._sum("params_binary")

    @property
    def params_float(self) -> int:
        return self._sum("params_float")

    @property
    def params(self) -> int:
        return self.params_binary + self.params_float

    @property
    def bops(self) -> int:
        return self._sum("bops")

    @property
    def flops(self) -> int:
        return self._sum("flops")

    @property
    def ops(self) -> float:
        """``BOPs / 64 + FLOPs``."""
        return self.bops / 64 + self.flops

    @property
    def size_fp32_bytes(self) -> int:
        """Every parameter at 32 bits."""
        return self.params * 4

    @property
    def size_packed_bytes(self) -> float:
        """Binary weights at 1 bit, everything else (and the weight scales) at 32 bits."""
        return sum(layer.memory_bytes for layer in self.layers)

    @property
    def compression(self) -> float:
        """``size_fp32 / size_packed``."""
        return self.size_fp32_bytes / self.size_packed_bytes if self.size_packed_bytes else 1.0

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        """Totals as a flat dict for a logger; ``layers=True`` adds the per-layer rows."""
        out: dict[str, Any] = {
            "params": self.params,
            "params_binary": self.params_binary,
            "params_float": self.params_float,
            "scales": self._sum("scales"),
            "size_fp32_mb": self.size_fp32_bytes / 2**20,
            "size_packed_mb": self.size_packed_bytes / 2**20,
            "compression": self.compression,
            "bops": self.bops,
            "flops": self.flops,
            "ops": self.ops,
        }
        if layers:
            out["layers"] = [asdict(layer) for layer in self.layers]
        return out

    def __str__(self) -> str:
        head = ["layer", "type", "output", "in/w bits", "params 1b", "params 32b", "bytes"]
        rows = [[*head, "BOPs", "FLOPs"]]
        for s in self.layers:
            if s.params_binary + s.params_float + s.bops + s.flops:
                shape = "x".join(map(str, s.output_shape[1:]))
                bits = f"{s.input_bits}/{s.weight_bits}"
                counts = (s.params_binary, s.params_float, s.memory_bytes, s.bops, s.flops)
                rows.append([s.name, s.kind, shape, bits, *map(_si, counts)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        size = f"{_si(self.size_packed_bytes)}B packed vs {_si(self.size_fp32_bytes)}B fp32"
        lines += [
            "-" * len(lines[0]),
            f"input {tuple(self.input_size)}  params {_si(self.params)} "
            f"({_si(self.params_binary)} binary, {_si(self.params_float)} float)",
            f"size {size} ({self.compression:.1f}x)",
            f"BOPs {self.bops:.3e}  FLOPs {self.flops:.3e}  OPs {self.ops:.3e} (BOPs/64 + FLOPs)",
        ]
        return "\n".join(lines)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _macs(module: nn.Module, inp: Tensor, out: Tensor, batch: int) -> int:
    """Multiply-accumulates of one call of a conv or linear layer, per image; else 0."""
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        if module.transposed:
            return inp.numel() // batch * module.out_channels // module.groups * kernel
        return out.numel() // batch * module.in_channels // module.groups * kernel
    if isinstance(module, nn.Linear):
        return out.numel() // batch * module.in_features
    return 0


def _owns_parameters_or_is_leaf(module: nn.Module) -> bool:
    no_children = next(module.children(), None) is None
    return no_children or next(module.parameters(recurse=False), None) is not None


def _layer(name: str, module: nn.Module, seen: set[int]) -> LayerSummary:
    """Precisions and parameter counts of ``module``'s own (not children's) parameters."""
    weight_bits = int(getattr(module, "weight_precision", 32))
    row = LayerSummary(
        name, type(module).__name__, int(getattr(module, "input_precision", 32)), weight_bits
    )
    for pname, p in module.named_parameters(recurse=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        if pname == "weight" and weight_bits == 1:
            row.params_binary += p.numel()
            scale = getattr(getattr(module, "weight_quantizer", None), "scale", None)
            row.scales += scale(p).numel() if callable(scale) else 0
        else:
            row.params_float += p.numel()
    return row


def _count(
    row: LayerSummary, batch: int, module: nn.Module, args: tuple[Any, ...], out: Any
) -> None:
    """Forward hook: record the output shape and add this call's MACs to ``row``."""
    if not isinstance(out, Tensor):
        return
    row.output_shape = tuple(out.shape)
    inp = args[0] if args and isinstance(args[0], Tensor) else out
    macs = _macs(module, inp, out, batch)
    if row.input_bits == 1 and row.weight_bits == 1:
        row.bops += macs
    else:
        row.flops += macs


@torch.no_grad()
def summary(
    model: nn.Module, input_size: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> ModelSummary:
    """Count bits, parameters, BOPs and FLOPs of ``model`` on one input of ``input_size``.

    Args:
        model: Any module; it runs once in eval mode (its train/eval state is restored). Build it
            under ``torch.device("meta")`` to count a large model instantly without memory.
        input_size: ``(C, H, W)`` for one image, or ``(N, C, H, W)``; counts are per image.
        dtype: Input dtype.
    """
    size = tuple(input_size) if len(input_size) != 3 else (1, *input_size)
    first = next(model.parameters(), None)
    x = torch.zeros(size, dtype=dtype, device=first.device if first is not None else None)
    seen: set[int] = set()
    rows, handles = [], []
    for name, module in model.named_modules():
        if (
            next(module.children(), None) is None
            or next(module.parameters(False), None) is not None
        ):
            rows.append(_layer(name, module, seen))
            handles.append(module.register_forward_hook(partial(_count, rows[-1], size[0])))
    training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return ModelSummary(size, rows)
