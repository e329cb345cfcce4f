"""Export a trained network to real 1 bit per weight, and account for the file's size.

``export_checkpoint("last.ckpt", "model.bnn")`` rebuilds the network of a ``BNNClassifier``
checkpoint, writes the packed file (format in :mod:`bnn_lightning.packed_format`) and returns an
:class:`ExportReport` that puts the file size next to the fp32 state dict and the size predicted
by :func:`bnn_lightning.summary.summary`. ``load_packed("model.bnn")`` gives the network back
in eval mode with the same logits. The bit-level primitives (:func:`pack_bits`,
:func:`unpack_bits`, bit order and word sizes) live in :mod:`bnn_lightning.bits`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from bnn_lightning.bits import BIT_ORDER, pack_bits, unpack_bits
from bnn_lightning.checkpoints import load_net_weights, net_from_checkpoint
from bnn_lightning.layers import Mode, binary_layers, set_mode
from bnn_lightning.packed_format import (
    FORMAT_VERSION,
    FixedScaleSign,
    PackedFormatError,
    export_packed,
    load_packed,
    read_manifest,
)
from bnn_lightning.summary import summary

__all__ = [
    "BIT_ORDER",
    "FORMAT_VERSION",
    "ExportReport",
    "FixedScaleSign",
    "PackedFormatError",
    "export_checkpoint",
    "export_packed",
    "export_report",
    "load_packed",
    "pack_bits",
    "read_manifest",
    "unpack_bits",
]


@dataclass(frozen=True)
class ExportReport:
    """Sizes of an export: the file, the fp32 state dict, and what the model summary predicts.

    ``predicted_bytes`` is :func:`bnn_lightning.summary.summary`'s packed size, which counts
    parameters only (binary weights at 1 bit, the rest and the weight scales at 32 bits) as
    papers do; the file also holds the BatchNorm running statistics (``buffer_bytes``) and the
    safetensors header with the manifest. ``overhead_bytes`` is what remains: the header, byte
    padding of each packed tensor, and the scales of plain-sign layers (1.0, stored anyway).
    """

    path: Path
    file_bytes: int
    fp32_bytes: int
    predicted_bytes: int
    buffer_bytes: int
    header_bytes: int
    packed_layers: int

    @property
    def overhead_bytes(self) -> int:
        return self.file_bytes - self.predicted_bytes - self.buffer_bytes

    @property
    def compression(self) -> float:
        """``fp32_bytes / file_bytes``."""
        return self.fp32_bytes / self.file_bytes

    def __str__(self) -> str:
        return "\n".join(
            [
                f"exported {self.path} ({self.packed_layers} binary layers packed to 1 bit)",
                f"  file      {self.file_bytes:>12,d} B  ({self.compression:.1f}x below fp32)",
                f"  fp32      {self.fp32_bytes:>12,d} B  (state dict, parameters and buffers)",
                f"  predicted {self.predicted_bytes:>12,d} B  (summary: packed parameters)",
                f"  + buffers {self.buffer_bytes:>12,d} B  (BatchNorm running statistics)",
                f"  overhead  {self.overhead_bytes:>12,d} B  (header {self.header_bytes:,d} B)",
            ]
        )


def _bytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in tensors)


def export_report(
    model: nn.Module, path: str | Path, input_size: tuple[int, ...] = (3, 32, 32)
) -> ExportReport:
    """Sizes of the file ``path`` exported from ``model`` (summary run on ``input_size``)."""
    path = Path(path)
    with path.open("rb") as f:
        header = 8 + int.from_bytes(f.read(8), "little")
    predicted = math.ceil(summary(model, input_size).size_packed_bytes)
    params = {id(p) for p in model.parameters()}
    state = model.state_dict(keep_vars=True)
    buffers = [t for t in state.values() if id(t) not in params]
    return ExportReport(
        path=path,
        file_bytes=path.stat().st_size,
        fp32_bytes=_bytes(state.values()),
        predicted_bytes=predicted,
        buffer_bytes=_bytes(buffers),
        header_bytes=header,
        packed_layers=sum(layer.weight_precision == 1 for _, layer in binary_layers(model)),
    )


def export_checkpoint(
    source: str | Path | nn.Module,
    out_path: str | Path,
    *,
    net: nn.Module | None = None,
    mode: Mode | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    extras: Mapping[str, Any] | None = None,
    input_size: tuple[int, ...] = (3, 32, 32),
) -> ExportReport:
    """Export a ``BNNClassifier`` checkpoint (or a network) to ``out_path`` and report sizes.

    Args:
        source: A Lightning checkpoint of ``BNNClassifier`` (network weights under ``net.``; the
            network is rebuilt from ``hyper_parameters["net"]``, read with ``weights_only=True``),
            or an ``nn.Module`` exported as it is.
        out_path: The packed file to write.
        net: A network to load the checkpoint's weights into instead of rebuilding it (what the
            CLI passes when it built the model from ``--config``).
        mode: Call :func:`~bnn_lightning.layers.set_mode` first (``binary`` for a checkpoint
            whose recorded mode is not the one its weights were last trained in).
        mean, std: Input normalization to record in the manifest.
        extras: More JSON values for the manifest (the checkpoint's file name is added).
        input_size: Input ``(C, H, W)`` for the summary's forward pass (sizes do not depend on it).
    """
    if isinstance(source, nn.Module):
        model, origin = source, {}
    else:
        model = net if net is not None else net_from_checkpoint(source)
        if net is not None:
            load_net_weights(net, source)
        origin = {"checkpoint": Path(source).name}
    if mode is not None:
        args = getattr(model, "init_args", {})
        set_mode(
            model,
            mode,
            activation=args.get("activation_quantizer", "ste_sign"),
            weight=args.get("weight_quantizer", "magnitude_aware_sign"),
        )
    path = export_packed(model, out_path, mean=mean, std=std, extras={**origin, **(extras or {})})
    return export_report(model, path, input_size)
