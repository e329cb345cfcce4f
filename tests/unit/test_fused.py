"""The fused binary conv, weight sign and PReLU equal the generic path bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn_lightning import fused, fused_cpu
from bnn_lightning import layers as L
from bnn_lightning.fused import _from_codes, pack_codes, sign_and_codes, unpack_codes
from bnn_lightning.fused_prelu import AddPReLU
from bnn_lightning.models import create_model
from bnn_lightning.quantizers import MagnitudeAwareSign, SteSign


class _GenericSteSign(SteSign):
    """Same maths as SteSign, but not SteSign's exact type, so it takes the generic path."""


class _GenericMagnitudeAwareSign(MagnitudeAwareSign):
    """Same maths as MagnitudeAwareSign, generic path."""


class _GenericAddPReLU(AddPReLU):
    """``nn.PReLU`` on the sum, ATen's backward."""

    def forward(self, x: Tensor, shortcut: Tensor | None = None) -> Tensor:
        return F.prelu(x if shortcut is None else x + shortcut, self.weight)


def _make_generic(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, L.BinaryConv2d):
            if type(module.input_quantizer) is SteSign:
                module.input_quantizer = _GenericSteSign(module.input_quantizer.clip)
            if type(module.weight_quantizer) is MagnitudeAwareSign:
                module.weight_quantizer = _GenericMagnitudeAwareSign(module.weight_quantizer.clip)
        if type(module) is AddPReLU:
            module.__class__ = _GenericAddPReLU
    return model


def _int8_or_skip() -> None:
    """Skip unless the int8 convolution works here (on any CPU: oneDNN has AVX2 kernels too)."""
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    problem = fused_cpu._int8_probe()
    if problem is not None:
        pytest.skip(f"no int8 convolution in this torch: {problem}")


@pytest.fixture(params=["int8", "cpu_kernels", "aten"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the one-pass CPU kernels and the int8 forward convolution (bf16,
    channels_last), the kernels alone, and the ATen ops alone."""
    if request.param == "aten":
        monkeypatch.setattr(fused_cpu, "usable", lambda device, dtype: False)
        monkeypatch.setattr(fused_cpu, "weights_usable", lambda w, dtype: False)
    elif fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    if request.param == "int8":
        _int8_or_skip()
        monkeypatch.setattr(fused, "INT8_MIN_POSITIONS", 0)  # the tests' small inputs too
    monkeypatch.setattr(fused_cpu, "int8_conv", lambda: request.param == "int8")
    return str(request.param)


def _edge_weights(conv: nn.Conv2d, clip: float) -> None:
    """Weights on the clip boundary, just past it, and signed zeros (sign(-0.0) = +1)."""
    with torch.no_grad():
        flat = conv.weight.view(-1)
        flat[:6] = torch.tensor([clip, -clip, 0.0, -0.0, -1e-40, 1e-40])
        flat[6] = torch.nextafter(torch.tensor(clip), torch.tensor(2.0 * clip))
        flat[7] = -flat[6]


def _run(layer: nn.Module, x: Tensor, autocast: bool) -> list[Tensor | None]:
    xi = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(xi)
    out.float().square().sum().backward()
    return [out, xi.grad] + [p.grad for p in layer.parameters()]


def _assert_equal(fused: list[Tensor | None], generic: list[Tensor | None]) -> None:
    for a, b in zip(fused, generic, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 13])
def test_codes_pack_four_to_a_byte_and_unpack(n: int) -> None:
    codes = torch.randint(0, 4, (n,), dtype=torch.uint8)
    packed = pack_codes(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 4)
    assert torch.equal(unpack_codes(packed, n), codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sign_and_codes(dtype: torch.dtype) -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 3.0, 1.5], dtype=dtype)
    sign, packed = sign_and_codes(x, 1.0, torch.bfloat16)
    assert sign.dtype == torch.bfloat16
    assert sign.tolist() == [-1, -1, -1, 1, 1, 1, 1, 1, 1]
    # 1[x >= 0] + 2 * 1[|x| <= clip]
    assert unpack_codes(packed, x.numel()).tolist() == [0, 2, 2, 3, 3, 3, 3, 1, 1]


@pytest.fixture(params=fused_cpu.LEVELS)
def level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each kernel level (portable, AVX2, AVX-512) that this CPU can run."""
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    index, best = fused_cpu.LEVELS.index(request.param), fused_cpu.level()
    if index > best:
        pytest.skip(f"this CPU has no {request.param} (best: {fused_cpu.LEVELS[best]})")
    monkeypatch.setattr(fused_cpu, "level", lambda: index)
    return str(request.param)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("numel", [1, 3, 4, 13, 31, 32, 33, 64, 65, 100, 4099])
@pytest.mark.parametrize("clip", [1.0, 1.302, 0.0, -0.5])
def test_cpu_kernels_equal_the_aten_ops(
    dtype: torch.dtype, numel: int, clip: float, level: str
) -> None:
    """Each level's kernels write the ATen path's bits: signed zeros, NaNs, infinities, the
    clip's edges, a zero or negative clip, and sizes around the 32-element vector groups."""
    edge = torch.tensor(clip, dtype=dtype)
    special = [0.0, -0.0, float("nan"), -float("nan"), float("inf"), -float("inf"), 1e-40]
    special += [edge, -edge, torch.nextafter(edge.float(), torch.tensor(9.0)), 65504.0]
    x = torch.randn(numel)
    x[: len(special)] = torch.tensor(special[:numel])
    x = x.to(dtype)
    sign, packed = fused_cpu.sign_codes(x, clip)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused_cpu, "usable", lambda device, dtype: False)
        aten_sign, aten_packed = sign_and_codes(x, clip, dtype)
    assert torch.equal(sign, aten_sign) and torch.equal(packed, aten_packed)
    if dtype != torch.float32:  # the int8 convolution's input: 2 where x >= 0, else 0
        u8, u8_packed = fused_cpu.sign_codes(x, clip, u8=True)
        assert u8.dtype == torch.uint8 and torch.equal(packed, u8_packed)
        assert torch.equal(u8, (aten_sign > 0).to(torch.uint8) * 2)
    grad, rebuilt = torch.randn(numel).to(dtype), torch.empty_like(x)
    masked = grad.clone()
    fused_cpu.codes_backward(packed, rebuilt, masked)
    aten_rebuilt, inside = _from_codes(packed, (x.shape, x.stride(), dtype))
    assert torch.equal(rebuilt, aten_rebuilt)
    assert torch.equal(masked, grad.view(inside.dtype).bitwise_and(inside).view(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cpu_kernels_on_several_threads(dtype: torch.dtype, level: str) -> None:
    """Tensors big enough that the kernels split them across threads give the same values."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        x = torch.randn(4, 16, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
        sign, packed = fused_cpu.sign_codes(x, 1.0)
        rebuilt, grad = torch.empty_like(x), torch.randn_like(x)
        masked = grad.clone()
        fused_cpu.codes_backward(packed, rebuilt, masked)
        u8 = fused_cpu.sign_codes(x, 1.0, u8=True)[0] if dtype == torch.bfloat16 else None
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(sign, torch.where(x >= 0, 1.0, -1.0).to(dtype)) and torch.equal(
        rebuilt, sign
    )
    if u8 is not None:
        assert u8.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(u8, (x >= 0).to(torch.uint8) * 2)
    assert torch.equal(masked, torch.where(x.abs() <= 1.0, grad, 0.0).to(dtype))


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("stride", "groups", "pad_value", "bias", "clip"),
    [(1, 1, 0.0, False, 1.0), (2, 2, -1.0, True, 0.3)],
)
def test_fused_conv_equals_the_generic_path(
    path: str,
    autocast: bool,
    channels_last: bool,
    stride: int,
    groups: int,
    pad_value: float,
    bias: bool,
    clip: float,
) -> None:
    def make() -> L.BinaryConv2d:
        return L.BinaryConv2d(
            4, 6, 3, stride, 1, groups=groups, bias=bias, pad_value=pad_value,
            input_quantizer=SteSign(clip), weight_quantizer=MagnitudeAwareSign(clip),
        )  # fmt: skip

    fused = make()
    _edge_weights(fused, clip)
    generic = _make_generic(make())
    generic.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 7, 7)  # 392 elements: codes fill whole bytes; (1, 4, 3, 5) below not
    x[0, :, 0] = 0.0
    x[0, :, 1] = -0.0
    x[1, :, 1] = clip  # on the clip boundary: the gradient passes
    x[1, :, 2] = -clip
    for inputs in (x, x[:1, :, :3, :5]):
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        assert fused._fused(fused.input_quantizer, inputs)
        assert not generic._fused(generic.input_quantizer, inputs)
        _assert_equal(_run(fused, inputs, autocast), _run(generic, inputs, autocast))
        fused.zero_grad(), generic.zero_grad()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip", [1.0, 0.3, 1.302])
def test_fused_weight_sign_equals_magnitude_aware_sign(
    path: str, dtype: torch.dtype, clip: float
) -> None:
    """Only the weight is binary (``binary_weights`` mode); clips that ``dtype`` rounds."""
    fused = L.BinaryConv2d(3, 5, 3, input_quantizer=None, weight_quantizer=MagnitudeAwareSign(clip))
    with torch.no_grad():  # every value of dtype around the clip
        edge = torch.tensor(clip, dtype=dtype).float()
        around = torch.arange(-8, 9) * (2.0**-23 if dtype == torch.float32 else 2.0**-7)
        fused.weight.view(-1)[:17] = (edge * (1 + around)).to(dtype).float()
    generic = _make_generic(
        L.BinaryConv2d(3, 5, 3, input_quantizer=None, weight_quantizer=MagnitudeAwareSign(clip))
    )
    fused, generic = fused.to(dtype), generic.to(dtype)
    generic.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    _assert_equal(_run(fused, x, False), _run(generic, x, False))


def _saved(layer: nn.Module, x: Tensor) -> list[tuple[torch.dtype, int, int]]:
    saved = []

    def pack(t: Tensor) -> Tensor:
        saved.append((t.dtype, t.numel(), t.data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return saved


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_conv_keeps_two_bits_an_input_and_at_most_two_bytes_a_weight(autocast: bool) -> None:
    conv = L.BinaryConv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        saved = _saved(conv, x)
    assert (torch.uint8, x.numel() // 4) in [s[:2] for s in saved]
    weight_bytes = torch.bfloat16 if autocast else torch.int8  # bf16 as is, fp32 as its signs
    assert (weight_bytes, conv.weight.numel()) in [s[:2] for s in saved]
    # Nothing else input- or weight-sized, but the latent weight itself (no copy).
    others = [s for s in saved if s[0] not in (torch.uint8, weight_bytes)]
    assert all(n < conv.weight.numel() or ptr == conv.weight.data_ptr() for _, n, ptr in others)


@pytest.mark.parametrize("autocast", [False, True])
def test_binary_resnet_equals_the_generic_path(
    path: str, autocast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forward outputs and every parameter gradient of a training step, channels_last."""
    calls = []
    int8_conv2d = fused_cpu.int8_conv2d
    monkeypatch.setattr(fused_cpu, "int8_conv2d", lambda *a: calls.append(1) or int8_conv2d(*a))
    fused = create_model("resnet10_cifar", num_classes=10, width=8)
    generic = _make_generic(create_model("resnet10_cifar", num_classes=10, width=8))
    generic.load_state_dict(fused.state_dict())
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    results = []
    for net in (fused, generic):
        net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x)
        F.cross_entropy(out.float(), torch.arange(4)).backward()
        results.append([out] + [p.grad for p in net.parameters()])
    _assert_equal(*results)
    assert len(calls) == (8 if path == "int8" and autocast else 0)  # every binary conv


def test_binary_sign_under_compile_equals_eager() -> None:
    """The compiled formulation (``torch.where``) gives the same values, ``sign(-0.0) = +1``."""
    from bnn_lightning.quantizers import binary_sign

    x = torch.tensor([-2.0, -1e-40, -0.0, 0.0, 1e-40, 3.0, float("nan"), float("-inf")])
    for dtype in (torch.float32, torch.bfloat16):
        eager = binary_sign(x.to(dtype))
        compiled = torch.compile(binary_sign, fullgraph=True, dynamic=False)(x.to(dtype))
        assert compiled.dtype == eager.dtype == dtype
        assert torch.equal(compiled, eager)
        assert eager.tolist() == [-1, -1, 1, 1, 1, 1, -1, -1]


@pytest.mark.parametrize("block", ["standard", "reactnet"])
def test_binary_training_forward_compiles_without_graph_breaks(block: str) -> None:
    """The whole training forward (bf16 autocast, channels_last, the loss) is one dynamo graph:
    a graph break would split the compiled step and run the elementwise work between the
    pieces eagerly."""
    net = create_model("resnet10_cifar", width=8, num_classes=10, mode="binary", block=block)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))

    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(net(x), y, label_smoothing=0.1)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(forward)(x, y)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize(("setting", "expected"), [("1", None), ("portable", 0), ("avx2", 1)])
def test_cpu_kernels_level_can_be_capped(
    setting: str, expected: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    best = int(fused_cpu.kernels().best_level())
    monkeypatch.setenv("BNN_CPU_KERNELS", setting)
    fused_cpu.level.cache_clear()
    try:
        assert fused_cpu.level() == (best if expected is None else min(best, expected))
    finally:
        fused_cpu.level.cache_clear()


def test_unknown_cpu_kernels_level_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    monkeypatch.setenv("BNN_CPU_KERNELS", "avx999")
    fused_cpu.level.cache_clear()
    try:
        with pytest.raises(
            ValueError, match=r"BNN_CPU_KERNELS='avx999'; use one of 0, 1, portable"
        ):
            fused_cpu.level()
    finally:
        fused_cpu.level.cache_clear()


def test_weight_signs_are_the_sign_bits_as_int8() -> None:
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    w = torch.randn(8, 5, 3, 3).to(torch.bfloat16)
    w.view(-1)[:4] = torch.tensor([0.0, -0.0, float("inf"), -float("inf")])
    w = w.contiguous(memory_format=torch.channels_last)
    signs = fused_cpu.weight_signs(w)
    assert signs.dtype == torch.int8 and signs.stride() == w.stride()
    assert torch.equal(signs, torch.where(torch.signbit(w), -1, 1).to(torch.int8))


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups", "pad_value", "clip"),
    [(1, 1, 1, 1, 0.0, 1.0), (2, 1, 1, 1, 0.0, 1.302), (1, 2, 2, 2, 0.0, 0.3),
     (2, 0, 1, 1, 0.0, 1.0), (1, 1, 1, 1, -1.0, 1.0)],
)  # fmt: skip
def test_int8_forward_equals_the_bf16_convolution(
    stride: int, padding: int, dilation: int, groups: int, pad_value: float, clip: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Under bf16 autocast and channels_last, the binary conv's forward runs as an int8
    convolution (counted) and gives the bf16 convolution's output and gradients bit for bit:
    zero padding (a third value), +-1 padding, strides, dilation, groups, the clip's edges,
    signed zeros, and sizes whose codes do not fill whole bytes or vector groups."""
    _int8_or_skip()
    monkeypatch.setattr(fused, "INT8_MIN_POSITIONS", 0)
    calls = []
    int8_conv2d = fused_cpu.int8_conv2d
    monkeypatch.setattr(fused_cpu, "int8_conv2d", lambda *a: calls.append(1) or int8_conv2d(*a))
    conv = L.BinaryConv2d(
        8, 12, 3, stride, padding, dilation, groups=groups, pad_value=pad_value,
        input_quantizer=SteSign(clip), weight_quantizer=MagnitudeAwareSign(clip),
    )  # fmt: skip
    _edge_weights(conv, clip)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(3, 8, 9, 11)
    x[0, :, 0], x[0, :, 1], x[1, :, 1], x[1, :, 2] = 0.0, -0.0, clip, -clip
    for inputs in (x, x[:1, :, :5, :7]):  # bf16, as a network's activations are under autocast
        inputs = inputs.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        results = {}
        for int8 in (True, False):
            monkeypatch.setattr(fused_cpu, "int8_conv", lambda int8=int8: int8)
            count = len(calls)
            results[int8] = _run(conv, inputs, autocast=True)
            assert len(calls) == count + int8  # the int8 convolution ran, or did not
            conv.zero_grad()
        _assert_equal(results[True], results[False])
        assert results[True][0].stride() == results[False][0].stride()


def test_int8_convolution_only_from_enough_output_positions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below ``INT8_MIN_POSITIONS`` (batch x output height x width) packing the weight costs
    more than int8 saves: the bf16 convolution runs there."""
    _int8_or_skip()
    monkeypatch.setattr(fused_cpu, "int8_conv", lambda: True)
    calls = []
    int8_conv2d = fused_cpu.int8_conv2d
    monkeypatch.setattr(fused_cpu, "int8_conv2d", lambda *a: calls.append(1) or int8_conv2d(*a))
    conv = L.BinaryConv2d(8, 8, 3, stride=2, padding=1).to(memory_format=torch.channels_last)
    limit = fused.INT8_MIN_POSITIONS
    for batch, height, expected in ((2, 2 * limit // 32, 1), (2, 2 * limit // 32 - 4, 0)):
        x = torch.randn(batch, 8, height, 32).to(torch.bfloat16)  # output: batch x height/2 x 16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x.contiguous(memory_format=torch.channels_last))
        assert len(calls) == expected
        calls.clear()


def test_int8_convolution_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``BNN_INT8_CONV``: 0 turns it off, an unknown value is named, and where the check on
    small convolutions fails the bf16 convolution stays, with the reason in a warning."""
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    fused_cpu.int8_conv.cache_clear()
    try:
        monkeypatch.setenv("BNN_INT8_CONV", "0")
        assert fused_cpu.int8_conv() is False
        fused_cpu.int8_conv.cache_clear()
        monkeypatch.setenv("BNN_INT8_CONV", "yes")
        with pytest.raises(ValueError, match=r"BNN_INT8_CONV='yes'; use auto, 0 or 1"):
            fused_cpu.int8_conv()
        fused_cpu.int8_conv.cache_clear()
        monkeypatch.setenv("BNN_INT8_CONV", "1")
        monkeypatch.setattr(fused_cpu, "_int8_probe", lambda: "RuntimeError: no oneDNN")
        with pytest.warns(UserWarning, match=r"unavailable \(RuntimeError: no oneDNN\)"):
            assert fused_cpu.int8_conv() is False
    finally:
        fused_cpu.int8_conv.cache_clear()


@pytest.mark.parametrize(
    ("dtype", "int8"), [(torch.bfloat16, True), (torch.bfloat16, False), (torch.float32, False)]
)
def test_compiled_sign_conv_op_equals_the_eager_fused_conv(
    dtype: torch.dtype, int8: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The op a compiled step runs for each binary conv (``bnn_lightning::ste_sign_conv2d``,
    compiled by inductor): output, input and weight gradients and their layouts are the eager
    fused conv's, bit for bit, with the int8 forward convolution where it applies."""
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    if int8:
        _int8_or_skip()
    monkeypatch.setattr(fused, "INT8_MIN_POSITIONS", 0)
    monkeypatch.setattr(fused_cpu, "int8_conv", lambda: int8)
    calls: list[int] = []
    real = fused_cpu.int8_conv2d
    monkeypatch.setattr(fused_cpu, "int8_conv2d", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    x = 1.5 * torch.randn(4, 8, 7, 7)
    x[0, :4, 0, 0] = torch.tensor([1.0, -1.0, 0.0, -0.0])  # on the clip and at zero
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    weight, scale = fused.magnitude_aware_sign(torch.randn(6, 8, 3, 3), 1.0, dtype)
    conv = ([2, 2], [1, 1], [1, 1], 1)

    def compiled_op(x: Tensor, w: Tensor) -> Tensor:
        return fused.ste_sign_conv2d_op(x, w, *conv, 1.0, int8)[0]

    results = []
    for run in ("eager", "compiled"):
        torch._dynamo.reset()
        xi, wi = (t.detach().clone().requires_grad_(True) for t in (x, weight))
        if run == "eager":
            out = fused.ste_sign_conv2d(xi, wi, None, (2, 2), (1, 1), (1, 1), 1, 1.0, scale)
        else:
            out = torch.compile(compiled_op, fullgraph=True)(xi, wi)
        out.float().square().sum().backward()
        results.append([out, xi.grad, wi.grad])
    _assert_equal(*results)
    for a, b in zip(*results, strict=True):
        assert a is not None and b is not None and a.stride() == b.stride()
    assert len(calls) == (2 if int8 else 0)  # eager and compiled forward


def test_compiled_sign_conv_op_registration() -> None:
    """``torch.library.opcheck``: schema, fake tensors, autograd and AOT dispatch agree."""
    if fused_cpu.kernels() is None:
        pytest.skip("the fused CPU kernels could not be built here (no C++ compiler?)")
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    weight = fused.magnitude_aware_sign(torch.randn(3, 4, 3, 3), 1.0, torch.float32)[0]
    args = (x.requires_grad_(True), weight.requires_grad_(True), [1, 1], [1, 1], [1, 1], 1, 1.0)
    torch.library.opcheck(fused.ste_sign_conv2d_op, (*args, False))
