"""Real 1-bit export: a safetensors file with bit-packed binary weights and a JSON manifest.

File layout (format ``bnn-lightning-packed``, version :data:`FORMAT_VERSION`):

* ``<layer>.weight:bits`` (uint8): the signs of the effective weight of every layer whose weight
  quantizer is binary (precision 1), packed by :func:`~bnn_lightning.bits.pack_bits` over the
  row-major flattened weight: bit order "little" (element ``i`` is bit ``i % 8`` of byte
  ``i // 8``, least significant bit first), bit 1 = +1, bit 0 = -1, last byte zero-padded.
* ``<layer>.weight:scale`` (float32, one per output channel): ``MagnitudeAwareSign``'s mean
  ``|w|``, 1.0 for a plain sign. ``scale[o] * (+-1)`` is bit for bit the weight training used.
* every other state-dict tensor (stem, classifier, BatchNorm with running stats, PReLU,
  attention) under its own key, floats as float32.
* metadata ``"bnn_lightning"``: the manifest, JSON: format and version, bnn_lightning version,
  bit order, ``model`` (class path + ``init_args``), ``num_classes``, ``normalization``
  (mean/std or null), ``layers`` (per quantized layer: input and weight quantizer specs, packed
  weight shape), user ``extras``, and a SHA-256 of all tensors that detects corruption.

:func:`load_packed` rebuilds the network in eval mode; binary weights come back as ``+-1`` with a
:class:`FixedScaleSign` weight quantizer, so its logits equal the exported model's exactly.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from bnn_lightning.bits import BIT_ORDER, pack_bits, unpack_bits
from bnn_lightning.checkpoints import build_net, load_strict, net_config
from bnn_lightning.layers import binary_layers
from bnn_lightning.packed import binary_weight_parts
from bnn_lightning.quantizers import Quantizer, binary_sign, get_quantizer, quantizer_name

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FixedScaleSign",
    "PackedFormatError",
    "export_packed",
    "load_packed",
    "quantizer_spec",
    "read_manifest",
]

FORMAT_NAME = "bnn-lightning-packed"
FORMAT_VERSION = 1
META_KEY = "bnn_lightning"
BITS, SCALE = ":bits", ":scale"


class PackedFormatError(ValueError):
    """A file is not a readable bnn-lightning packed model (corrupt, truncated, other format)."""


class FixedScaleSign(Quantizer):
    """Inference form of a binary weight quantizer: ``q(w) = scale[o] * sign(w)``, stored scale.

    Args:
        channel_scale: One scale per output channel.
        source: Spec of the quantizer the weights were trained with (kept for re-export).
    """

    precision = 1
    channel_scale: Tensor

    def __init__(self, channel_scale: Tensor, source: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.register_buffer("channel_scale", channel_scale.detach().float(), persistent=False)
        self.source = source

    def scale(self, w: Tensor) -> Tensor:
        """The stored scale shaped to broadcast against ``w``."""
        return self.channel_scale.view(-1, *[1] * (w.dim() - 1))

    def forward(self, w: Tensor) -> Tensor:
        return self.scale(w) * binary_sign(w)


def quantizer_spec(quantizer: nn.Module | None) -> dict[str, Any] | None:
    """``{"name", "class_path", "init_args"}`` of a quantizer (what ``get_quantizer`` takes).

    A quantizer held by another one (the sign inside :class:`~bnn_lightning.RSign`) is given by
    its own spec; learned values (RSign's thresholds) are state-dict tensors, not arguments.
    """
    if quantizer is None:
        return None
    if isinstance(quantizer, FixedScaleSign):
        return quantizer.source
    cls = type(quantizer)
    params = inspect.signature(cls.__init__).parameters
    init_args = {
        k: quantizer_spec(v) if isinstance(v, nn.Module) else v
        for k in params
        if k != "self" and hasattr(quantizer, k)
        for v in [getattr(quantizer, k)]
    }
    return {
        "name": quantizer_name(quantizer),
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": init_args,
    }


def _payload(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors to store and the per-layer manifest entries."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors: dict[str, Tensor] = {}
    layers: dict[str, Any] = {}
    for name, layer in binary_layers(model):
        entry: dict[str, Any] = {
            "input_quantizer": quantizer_spec(layer.input_quantizer),
            "weight_quantizer": quantizer_spec(layer.weight_quantizer),
        }
        if layer.weight_precision == 1:
            signs, scale = binary_weight_parts(layer)
            tensors[f"{name}.weight{BITS}"], shape = pack_bits(signs.cpu())
            tensors[f"{name}.weight{SCALE}"] = scale.cpu()
            entry["packed_shape"] = list(shape)
            del state[f"{name}.weight"]
        layers[name] = entry
    for key, value in state.items():
        dtype = torch.float32 if value.is_floating_point() else value.dtype
        tensors[key] = value.to(dtype, memory_format=torch.contiguous_format, copy=True)
    return tensors, layers


def _checksum(tensors: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None
) -> dict[str, list[float]] | None:
    if (mean is None) != (std is None):
        raise ValueError(f"Give both mean and std (or neither), got mean={mean}, std={std}.")
    if mean is None or std is None:
        return None
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def export_packed(
    model: nn.Module,
    path: str | Path,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    extras: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a packed safetensors file (layout in the module doc); returns the path.

    Args:
        model: A network that records plain ``init_args`` (e.g. ``BinaryResNet``).
        path: Output file.
        mean, std: Input normalization to record in the manifest.
        extras: JSON-serializable values added to the manifest under ``extras``.

    Raises:
        ValueError: The model has no plain ``init_args`` to rebuild it from, only one of
            ``mean`` / ``std`` is given, or ``extras`` is not JSON-serializable.
    """
    from bnn_lightning import __version__

    config = net_config(model)
    if config is None:
        raise ValueError(
            f"{type(model).__name__} records no plain init_args, so the file could not rebuild "
            "it; export a model built from bnn_lightning.models (e.g. BinaryResNet)."
        )
    tensors, layers = _payload(model)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bnn_lightning_version": __version__,
        "bit_order": BIT_ORDER,
        "model": config,
        "num_classes": config["init_args"].get("num_classes", getattr(model, "num_classes", None)),
        "normalization": _normalization(mean, std),
        "layers": layers,
        "extras": dict(extras or {}),
        "sha256": _checksum(tensors),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(manifest)
    except TypeError as err:
        raise ValueError(f"The manifest must be JSON-serializable ({err}); check extras.") from err
    save_file(tensors, str(path), metadata={"format": "pt", META_KEY: text})
    return path


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and manifest of a packed file, validated (format, version, checksum)."""
    if not path.is_file():
        raise FileNotFoundError(f"Packed model {path} does not exist; check the path.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:
        raise PackedFormatError(
            f"{path} is not a readable safetensors file ({_one_line(err)}); it may be truncated "
            "or corrupt, export it again with export_packed() or `bnn export`."
        ) from err
    try:
        manifest = json.loads(meta[META_KEY])
        version = int(manifest["format_version"]) if manifest["format"] == FORMAT_NAME else -1
    except (KeyError, TypeError, ValueError):
        version = -1
    if version < 0:
        raise PackedFormatError(
            f"{path} is not a bnn-lightning packed model (no valid '{META_KEY}' manifest); "
            "export one with export_packed() or `bnn export`."
        )
    if version > FORMAT_VERSION:
        raise PackedFormatError(
            f"{path} has format version {version}, newer than this bnn_lightning reads "
            f"({FORMAT_VERSION}); upgrade bnn_lightning."
        )
    if _checksum(tensors) != manifest.get("sha256"):
        raise PackedFormatError(
            f"{path} is corrupt: its tensors do not match the manifest checksum; export it again."
        )
    return tensors, manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The validated manifest of a packed file (normalization, model config, extras, ...)."""
    return _read(Path(path))[1]


def _restore(model: nn.Module, tensors: dict[str, Tensor], layers: Mapping[str, Any], source: str):
    """Load ``tensors`` into the rebuilt ``model`` and put back every layer's quantizers."""
    state = {k: v for k, v in tensors.items() if not k.endswith((BITS, SCALE))}
    own = dict(binary_layers(model))
    if set(own) != set(layers):
        raise ValueError(f"the binary layers of {source} do not match the rebuilt network")
    for name, entry in layers.items():
        layer = own[name]
        layer.input_quantizer = get_quantizer(entry["input_quantizer"])
        layer.weight_quantizer = get_quantizer(entry["weight_quantizer"])
        if "packed_shape" in entry:
            key = f"{name}.weight"
            state[key] = unpack_bits(tensors[key + BITS], entry["packed_shape"])
            layer.weight_quantizer = FixedScaleSign(tensors[key + SCALE], entry["weight_quantizer"])
    load_strict(model, state, source)


def load_packed(path: str | Path) -> nn.Module:
    """Rebuild the network stored by :func:`export_packed`, in eval mode on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackedFormatError: The file is truncated, corrupt, not a packed model, or does not fit
            the architecture its manifest names.
    """
    path = Path(path)
    tensors, manifest = _read(path)
    try:
        model = build_net(manifest["model"])
        _restore(model, tensors, manifest["layers"], str(path))
    except (KeyError, TypeError, ValueError) as err:
        raise PackedFormatError(f"{path} cannot be rebuilt: {_one_line(err)}.") from err
    return model.eval()
