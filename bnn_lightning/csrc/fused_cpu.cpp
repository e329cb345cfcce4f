// One-pass CPU kernels of bnn_lightning's fused binary conv: see bnn_lightning/fused_cpu.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstring>

namespace {

constexpr uint64_t kHigh = 0x8000800080008000ULL;  // bit 15 of each 16-bit lane
constexpr uint64_t kGather = (1ULL << 56) | (1ULL << 42) | (1ULL << 28) | (1ULL << 14);
constexpr int64_t kGrain = 16384;

inline uint64_t lanes(uint64_t v) { return v * 0x0001000100010001ULL; }

// Bit 15 of each lane set where the lane (below 0x8000) is at most the limit's lane.
inline uint64_t at_most(uint64_t value, uint64_t limit) {
  return ((limit | kHigh) - value) & kHigh;
}

struct Word {
  uint64_t sign;
  uint8_t codes;
};

// Four 2-byte floats: sign (+1 for x >= 0, -0.0 included; -1 below and for NaN), and the codes
// 1[x >= 0] | 1[|x| <= clip] << 1 of element k at bits 2k.
inline Word encode(uint64_t v, uint64_t infinity, uint64_t clip, uint64_t minus_one) {
  const uint64_t magnitude = v & ~kHigh;
  const uint64_t number = at_most(magnitude, infinity);
  const uint64_t zero = at_most(magnitude, 0);
  const uint64_t positive = number & (~v | zero) & kHigh;
  const uint64_t inside = at_most(magnitude, clip);
  const uint64_t gathered =
      (((positive >> 15) * kGather) >> 56) | (((inside >> 15) * kGather) >> 55);
  return {minus_one ^ positive, static_cast<uint8_t>(gathered)};
}

}  // namespace

std::vector<torch::Tensor> sign_codes(torch::Tensor x, int64_t infinity, int64_t clip,
                                      int64_t one) {
  const int64_t n = x.numel();
  auto sign = torch::empty_like(x);
  auto packed = torch::empty({(n + 3) / 4}, x.options().dtype(torch::kUInt8));
  const uint8_t* in = static_cast<const uint8_t*>(x.data_ptr());
  uint8_t* out = static_cast<uint8_t*>(sign.data_ptr());
  uint8_t* codes = packed.data_ptr<uint8_t>();
  const uint64_t inf4 = lanes(infinity), clip4 = lanes(clip), minus4 = lanes(one | 0x8000);
  const int64_t words = n / 4;
  at::parallel_for(0, words, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      uint64_t v;
      std::memcpy(&v, in + 8 * w, 8);
      const Word word = encode(v, inf4, clip4, minus4);
      std::memcpy(out + 8 * w, &word.sign, 8);
      codes[w] = word.codes;
    }
  });
  const int64_t tail = n - 4 * words;
  if (tail) {  // the last 1-3 elements, zero-padded to a word
    uint64_t v = 0;
    std::memcpy(&v, in + 8 * words, 2 * tail);
    const Word word = encode(v, inf4, clip4, minus4);
    std::memcpy(out + 8 * words, &word.sign, 2 * tail);
    codes[words] = word.codes & static_cast<uint8_t>((1 << (2 * tail)) - 1);
  }
  return {sign, packed};
}

// The +-1 input rebuilt from the codes into sign (if given), and grad (if given, same memory
// order) zeroed where the codes say |x| > clip. Dense 2-byte floats of numel elements.
void codes_backward(torch::Tensor packed, c10::optional<torch::Tensor> sign,
                    c10::optional<torch::Tensor> grad, int64_t numel, int64_t one) {
  uint64_t signs[256], masks[256];
  for (int b = 0; b < 256; ++b) {
    signs[b] = masks[b] = 0;
    for (int k = 0; k < 4; ++k) {
      const int code = (b >> (2 * k)) & 3;
      signs[b] |= static_cast<uint64_t>((code & 1) ? one : (one | 0x8000)) << (16 * k);
      masks[b] |= static_cast<uint64_t>((code & 2) ? 0xFFFF : 0) << (16 * k);
    }
  }
  const uint8_t* codes = packed.data_ptr<uint8_t>();
  uint8_t* s = sign.has_value() ? static_cast<uint8_t*>(sign->data_ptr()) : nullptr;
  uint8_t* g = grad.has_value() ? static_cast<uint8_t*>(grad->data_ptr()) : nullptr;
  auto word = [&](int64_t w, int64_t bytes) {
    if (s) std::memcpy(s + 8 * w, &signs[codes[w]], bytes);
    if (g) {
      uint64_t v = 0;
      std::memcpy(&v, g + 8 * w, bytes);
      v &= masks[codes[w]];
      std::memcpy(g + 8 * w, &v, bytes);
    }
  };
  const int64_t words = numel / 4;
  at::parallel_for(0, words, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) word(w, 8);
  });
  if (numel % 4) word(words, 2 * (numel % 4));
}

// MagnitudeAwareSign's binary weight: out[i] = +scale[c] where w[i] >= 0 (-0.0 included), else
// -scale[c] (NaN included), for w fp32 with output channel c outermost in memory (K elements
// each); scale holds the bits of the per-channel scale in the output's 2- or 4-byte format.
template <typename Bits>
void binary_weight_kernel(const float* w, const Bits* scale, Bits* out, int64_t channels,
                          int64_t per_channel) {
  constexpr Bits kSign = Bits(1) << (8 * sizeof(Bits) - 1);
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Bits plus = scale[c], minus = scale[c] ^ kSign;
      const float* in = w + c * per_channel;
      Bits* o = out + c * per_channel;
      for (int64_t i = 0; i < per_channel; ++i) o[i] = in[i] >= 0.0f ? plus : minus;
    }
  });
}

torch::Tensor binary_weight(torch::Tensor w, torch::Tensor scale_bits) {
  auto out = torch::empty_like(w, w.options().dtype(scale_bits.scalar_type()));
  const int64_t channels = w.size(0), per_channel = w.numel() / w.size(0);
  const float* in = w.data_ptr<float>();
  if (scale_bits.element_size() == 2) {
    binary_weight_kernel(in, static_cast<const uint16_t*>(scale_bits.data_ptr()),
                         static_cast<uint16_t*>(out.data_ptr()), channels, per_channel);
  } else {
    binary_weight_kernel(in, static_cast<const uint32_t*>(scale_bits.data_ptr()),
                         static_cast<uint32_t*>(out.data_ptr()), channels, per_channel);
  }
  return out;
}

// MagnitudeAwareSign's latent gradient: grad[i] * scale[c] where |w[i]| <= clip, else 0, in fp32
// (grad in bf16, fp16 or fp32, converted exactly; one rounding, as float(grad) * scale).
template <typename Grad>
void weight_grad_kernel(const Grad* grad, const float* w, const float* scale, float* out,
                        float clip, int64_t channels, int64_t per_channel) {
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const float s = scale[c];
      const int64_t first = c * per_channel;
      for (int64_t i = first; i < first + per_channel; ++i) {
        out[i] = std::abs(w[i]) <= clip ? static_cast<float>(grad[i]) * s : 0.0f;
      }
    }
  });
}

torch::Tensor weight_grad(torch::Tensor grad, torch::Tensor w, torch::Tensor scale, double clip) {
  auto out = torch::empty_like(w);
  const int64_t channels = w.size(0), per_channel = w.numel() / w.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "weight_grad", [&] {
    weight_grad_kernel(grad.data_ptr<scalar_t>(), w.data_ptr<float>(), scale.data_ptr<float>(),
                       out.data_ptr<float>(), static_cast<float>(clip), channels, per_channel);
  });
  return out;
}

// PReLU of a residual sum, in bf16 or fp16 with ATen's arithmetic (each result rounded to the
// format once, from float): z = x + shortcut; out = z > 0 ? z : slope[c] * z. The channel of
// flat index i is (i / inner) % channels: inner = 1 for channels-last, H * W for NCHW.
template <typename T, typename F>
void per_channel(int64_t n, int64_t inner, int64_t channels, const F& body) {
  at::parallel_for(0, n / inner, std::max<int64_t>(1, kGrain / inner), [&](int64_t b, int64_t e) {
    for (int64_t block = b; block < e; ++block) {
      if (inner == 1) {
        body(block, block % channels);
      } else {
        const int64_t c = block % channels;
        for (int64_t i = block * inner; i < (block + 1) * inner; ++i) body(i, c);
      }
    }
  });
}

std::vector<torch::Tensor> add_prelu(torch::Tensor x, torch::Tensor shortcut, torch::Tensor slope,
                                     int64_t inner) {
  auto z = torch::empty_like(x), out = torch::empty_like(x);
  const int64_t n = x.numel(), channels = slope.numel();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "add_prelu", [&] {
    const scalar_t *a = x.data_ptr<scalar_t>(), *b = shortcut.data_ptr<scalar_t>();
    const scalar_t* w = slope.data_ptr<scalar_t>();
    scalar_t *zp = z.data_ptr<scalar_t>(), *op = out.data_ptr<scalar_t>();
    per_channel<scalar_t>(n, inner, channels, [&](int64_t i, int64_t c) {
      const scalar_t sum = static_cast<float>(a[i]) + static_cast<float>(b[i]);
      zp[i] = sum;
      op[i] = sum > scalar_t(0) ? sum : scalar_t(static_cast<float>(w[c]) * static_cast<float>(sum));
    });
  });
  return {z, out};
}

// Its backward, as ATen's PReLU backward: grad_z = z > 0 ? g : slope[c] * g; the slope's
// per-element gradient z > 0 ? 0 : z * g (summed per channel by the caller, as autograd does).
std::vector<torch::Tensor> add_prelu_backward(torch::Tensor z, torch::Tensor grad,
                                              torch::Tensor slope, int64_t inner) {
  auto grad_z = torch::empty_like(z), full = torch::empty_like(z);
  const int64_t n = z.numel(), channels = slope.numel();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(z.scalar_type(), "add_prelu_backward", [&] {
    const scalar_t *zp = z.data_ptr<scalar_t>(), *g = grad.data_ptr<scalar_t>();
    const scalar_t* w = slope.data_ptr<scalar_t>();
    scalar_t *gz = grad_z.data_ptr<scalar_t>(), *fp = full.data_ptr<scalar_t>();
    per_channel<scalar_t>(n, inner, channels, [&](int64_t i, int64_t c) {
      const bool positive = zp[i] > scalar_t(0);
      gz[i] = positive ? g[i] : scalar_t(static_cast<float>(w[c]) * static_cast<float>(g[i]));
      fp[i] = positive ? scalar_t(0) : scalar_t(static_cast<float>(zp[i]) * static_cast<float>(g[i]));
    });
  });
  return {grad_z, full};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("add_prelu", &add_prelu, "prelu(x + shortcut) and the sum");
  m.def("add_prelu_backward", &add_prelu_backward, "its input and per-element slope gradients");
  m.def("binary_weight", &binary_weight, "MagnitudeAwareSign's weight in a 2- or 4-byte format");
  m.def("weight_grad", &weight_grad, "MagnitudeAwareSign's latent-weight gradient");
  m.def("sign_codes", &sign_codes, "sign(x) and its packed 2-bit codes");
  m.def("codes_backward", &codes_backward, "the +-1 input and the STE mask from the codes");
}
