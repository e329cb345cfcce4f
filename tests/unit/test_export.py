"""1-bit export: bit packing, the packed file's logits, its error messages and its size."""

from __future__ import annotations

import json
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from bnn_lightning.checkpoints import net_config
from bnn_lightning.export import (
    FixedScaleSign,
    PackedFormatError,
    export_checkpoint,
    export_packed,
    export_report,
    load_packed,
    pack_bits,
    read_manifest,
    unpack_bits,
)
from bnn_lightning.layers import binary_layers, get_modes, set_quantizers
from bnn_lightning.models import BinaryResNet


def _trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine/PReLU values, as after training; eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.0, 0.5)
    return model.eval()


def _tiny(**kwargs: Any) -> nn.Module:
    return _trained_like(BinaryResNet("resnet18", 10, stem="cifar", **{"width": 8, **kwargs}))


def _signs(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


# --- pack_bits / unpack_bits -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (63,), (65,), (3, 5, 7), (13, 65, 3, 1)])
def test_pack_roundtrip_is_bit_exact(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    t = torch.randn(shape)
    t.view(-1)[0] = 0.0  # zero packs as +1, like binary_sign
    for dim in (None, *range(len(shape))):
        words, size = pack_bits(t, dtype, dim=dim)
        assert words.dtype == dtype and size == t.shape
        assert torch.equal(unpack_bits(words, size, dim=dim), _signs(t))


@pytest.mark.parametrize(("dtype", "bits"), [(torch.uint8, 8), (torch.int64, 64)])
def test_bit_order_is_little_endian_within_a_word(dtype: torch.dtype, bits: int) -> None:
    n = 2 * bits + 3
    for i in (0, 1, bits - 1, bits, n - 1):
        t = -torch.ones(n)
        t[i] = 1.0
        words, _ = pack_bits(t, dtype)
        expected = torch.zeros(len(words), dtype=torch.int64)
        expected[i // bits] = 1 << (i % bits) if i % bits < 63 else -(2**63)
        assert torch.equal(words.to(torch.int64), expected)


def test_uint8_bytes_equal_numpy_packbits_little() -> None:
    t = torch.randn(5, 11, 3)
    words, _ = pack_bits(t)
    assert np.array_equal(words.numpy(), np.packbits((t >= 0).numpy(), bitorder="little"))


def test_unpack_rejects_a_wrong_shape() -> None:
    words, _ = pack_bits(torch.randn(20))
    with pytest.raises(ValueError, match="do not match shape"):
        unpack_bits(words, (30,))


# --- export_packed / load_packed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"attention": "se", "groups": 2, "pad_value": -1.0},
        {
            "binary_head": True,
            "weight_quantizer": "ste_sign",
            "activation_quantizer": "approx_sign",
        },
        {"mode": "binary_activations"},
    ],
)
def test_load_packed_logits_equal_the_eval_model(tmp_path: Path, options: dict[str, Any]) -> None:
    model = _tiny(**options)
    x = torch.randn(4, 3, 32, 32)
    path = export_packed(model, tmp_path / "m.bnn")
    loaded = load_packed(path)
    assert not loaded.training
    assert torch.equal(loaded(x), model(x))
    assert get_modes(loaded) == get_modes(model)


def test_packed_weights_are_the_signs_and_scales(tmp_path: Path) -> None:
    model = _tiny()
    export_packed(model, tmp_path / "m.bnn")
    tensors = load_file(tmp_path / "m.bnn")
    conv = model.stages[1][0].conv
    bits = tensors["stages.1.0.conv.weight:bits"]
    assert bits.dtype == torch.uint8 and bits.numel() == -(-conv.weight.numel() // 8)
    assert torch.equal(unpack_bits(bits, conv.weight.shape), _signs(conv.weight.detach()))
    scale = conv.weight.detach().abs().mean(dim=(1, 2, 3))
    assert torch.equal(tensors["stages.1.0.conv.weight:scale"], scale)
    assert "stages.1.0.conv.weight" not in tensors
    assert tensors["stages.1.0.bn.running_var"].dtype == torch.float32


def test_manifest_records_model_normalization_and_quantizers(tmp_path: Path) -> None:
    model = _tiny(activation_quantizer="approx_sign")
    set_quantizers(model.stages[0][0], input_quantizer="swish_sign")
    path = export_packed(model, tmp_path / "m.bnn", mean=[0.5] * 3, std=[0.2] * 3, extras={"k": 1})
    manifest = read_manifest(path)
    assert manifest["model"] == net_config(model)
    assert manifest["num_classes"] == 10
    assert manifest["normalization"] == {"mean": [0.5] * 3, "std": [0.2] * 3}
    assert manifest["extras"] == {"k": 1} and manifest["bit_order"] == "little"
    layers = manifest["layers"]
    assert layers["stages.0.0.conv"]["input_quantizer"]["name"] == "swish_sign"
    assert layers["stages.0.1.conv"]["input_quantizer"]["name"] == "approx_sign"
    assert layers["stages.0.1.conv"]["weight_quantizer"]["name"] == "magnitude_aware_sign"
    loaded = load_packed(path)
    assert type(loaded.stages[0][0].conv.input_quantizer).__name__ == "SwishSign"


def test_reexport_of_a_loaded_model_is_identical(tmp_path: Path) -> None:
    export_packed(_tiny(), tmp_path / "a.bnn")
    loaded = load_packed(tmp_path / "a.bnn")
    assert isinstance(loaded.stages[0][0].conv.weight_quantizer, FixedScaleSign)
    export_packed(loaded, tmp_path / "b.bnn")
    a, b = load_file(tmp_path / "a.bnn"), load_file(tmp_path / "b.bnn")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        read_manifest(tmp_path / "a.bnn")["layers"] == read_manifest(tmp_path / "b.bnn")["layers"]
    )


def _first_cifar_images(archive: Path, n: int) -> torch.Tensor:
    """Decode the first ``n`` JPEGs of the archive with PIL, normalized like CIFAR-10 training."""
    images = []
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                images.append(np.asarray(Image.open(BytesIO(data)).convert("RGB")))
                if len(images) == n:
                    break
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.247, 0.243, 0.261])
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def test_load_packed_parity_on_real_cifar10_images(tmp_path: Path, cifar10_archive: Path) -> None:
    x = _first_cifar_images(cifar10_archive, 8)
    assert x.shape == (8, 3, 32, 32)
    model = _tiny(width=16, attention="se")
    path = export_packed(model, tmp_path / "m.bnn")
    assert torch.equal(load_packed(path)(x), model(x))


def _checkpoint(model: nn.Module, path: Path) -> Path:
    """A checkpoint shaped like BNNClassifier's: weights under ``net.``, net config in hparams."""
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"net": net_config(model)}}, path)
    return path


def test_export_checkpoint_from_a_lightning_checkpoint(tmp_path: Path) -> None:
    model = _tiny()
    ckpt = _checkpoint(model, tmp_path / "last.ckpt")
    report = export_checkpoint(ckpt, tmp_path / "m.bnn", mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_packed(report.path)(x), model(x))
    assert read_manifest(report.path)["extras"] == {"checkpoint": "last.ckpt"}


def test_export_checkpoint_into_a_given_net_with_mode(tmp_path: Path) -> None:
    model = _tiny(mode="binary_activations")
    ckpt = _checkpoint(model, tmp_path / "stage1.ckpt")
    net = BinaryResNet("resnet18", 10, stem="cifar", width=8, mode="binary_activations")
    report = export_checkpoint(ckpt, tmp_path / "m.bnn", net=net, mode="binary")
    assert report.packed_layers == len(binary_layers(net)) == 16
    assert get_modes(load_packed(report.path)) == {"binary": 16}


# --- errors ------------------------------------------------------------------------------------


def _assert_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(PackedFormatError, match=match) as info:
        load_packed(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_truncated_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = export_packed(_tiny(), tmp_path / "m.bnn")
    data = path.read_bytes()
    for cut in (len(data) - 100, 200, 4):
        path.write_bytes(data[:cut])
        _assert_one_line_error(path, "not a readable safetensors file")


def test_corrupt_payload_is_detected_by_the_checksum(tmp_path: Path) -> None:
    path = export_packed(_tiny(), tmp_path / "m.bnn")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # one flipped bit in the tensor data, header intact
    path.write_bytes(bytes(data))
    _assert_one_line_error(path, "checksum")


def test_other_formats_are_rejected(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, plain)
    _assert_one_line_error(plain, "not a bnn-lightning packed model")
    pickle = tmp_path / "model.pt"
    torch.save(_tiny().state_dict(), pickle)
    _assert_one_line_error(pickle, "not a readable safetensors file")
    with pytest.raises(FileNotFoundError, match=r"missing\.bnn"):
        load_packed(tmp_path / "missing.bnn")


def test_newer_format_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "future.bnn"
    manifest = {"format": "bnn-lightning-packed", "format_version": 99}
    save_file({"w": torch.zeros(3)}, path, metadata={"bnn_lightning": json.dumps(manifest)})
    _assert_one_line_error(path, "format version 99")


def test_export_rejects_what_it_cannot_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no plain init_args"):
        export_packed(nn.Linear(3, 2), tmp_path / "m.bnn")
    with pytest.raises(ValueError, match="both mean and std"):
        export_packed(_tiny(), tmp_path / "m.bnn", mean=[0.5] * 3)
    with pytest.raises(ValueError, match="JSON-serializable"):
        export_packed(_tiny(), tmp_path / "m.bnn", extras={"x": object()})


def test_channels_last_model_exports_and_reloads(tmp_path: Path) -> None:
    model = _tiny().to(memory_format=torch.channels_last)  # non-contiguous 4-D tensors
    loaded = load_packed(export_packed(model, tmp_path / "m.bnn"))
    # The effective binary weights are bit-exact (their scale too: mean|w| summed in the order
    # of the channels_last layout); convs in another memory format may round differently.
    for (name, layer), (_, copy) in zip(binary_layers(model), binary_layers(loaded), strict=True):
        assert torch.equal(copy.quantized_weight(), layer.quantized_weight()), name
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


# --- size accounting ---------------------------------------------------------------------------


def test_file_size_agrees_with_the_summary_prediction(tmp_path: Path) -> None:
    model = _trained_like(BinaryResNet("resnet18", 10, stem="cifar", width=16))
    path = export_packed(model, tmp_path / "m.bnn")
    report = export_report(model, path)
    packed = [layer for _, layer in binary_layers(model)]
    assert report.file_bytes == path.stat().st_size
    assert report.packed_layers == len(packed) == 16
    # Header plus at most one padding byte per packed tensor; nothing else is unaccounted.
    assert 0 <= report.overhead_bytes - report.header_bytes < len(packed)
    state = model.state_dict()
    floats = sum(t.numel() for t in state.values() if t.is_floating_point())
    counters = sum(k.endswith("num_batches_tracked") for k in state)  # int64 scalars
    assert report.fp32_bytes == 4 * floats + 8 * counters
    assert report.file_bytes < report.fp32_bytes / 8
