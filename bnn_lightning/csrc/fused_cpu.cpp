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
// order) zeroed where the codes say |x| > clip: dense floats of Bytes bytes each (2 or 4; one is
// the bit pattern of 1.0), numel elements. Each code byte stands for Bytes 64-bit-word halves
// of four elements: two 256-entry tables give their signs and masks.
template <int Bytes>
void codes_backward_kernel(const uint8_t* codes, uint8_t* s, uint8_t* g, int64_t numel,
                           uint64_t one) {
  constexpr int kWords = Bytes / 2;  // 64-bit words per four elements
  constexpr int kBits = 8 * Bytes;
  const uint64_t sign_bit = uint64_t(1) << (kBits - 1), all = (sign_bit << 1) - 1;
  uint64_t signs[256][kWords], masks[256][kWords];  // read by every worker thread
  for (int b = 0; b < 256; ++b) {
    for (int w = 0; w < kWords; ++w) signs[b][w] = masks[b][w] = 0;
    for (int k = 0; k < 4; ++k) {
      const int code = (b >> (2 * k)) & 3, word = (k * Bytes) / 8, shift = (k * kBits) % 64;
      signs[b][word] |= ((code & 1) ? one : (one | sign_bit)) << shift;
      masks[b][word] |= ((code & 2) ? all : 0) << shift;
    }
  }
  auto block = [&](int64_t i, int64_t bytes) {  // the four elements of code byte i
    const uint8_t code = codes[i];
    if (s) std::memcpy(s + 4 * Bytes * i, signs[code], bytes);
    if (g) {
      uint64_t v[kWords] = {};
      std::memcpy(v, g + 4 * Bytes * i, bytes);
      for (int w = 0; w < kWords; ++w) v[w] &= masks[code][w];
      std::memcpy(g + 4 * Bytes * i, v, bytes);
    }
  };
  const int64_t full = numel / 4;
  at::parallel_for(0, full, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) block(i, 4 * Bytes);
  });
  if (numel % 4) block(full, Bytes * (numel % 4));
}

// fp32 kernels, in blocks of 64 elements (16 code bytes): one loop over the elements of a block
// (integer operations on the bits, no branches: the compiler vectorises it), one over its bytes.
constexpr int64_t kBlock = 64;
constexpr uint32_t kMinusOne = 0xBF800000u, kInfinity = 0x7F800000u;

// |x| <= clip on the bits of x: magnitude < the returned bound (0 when no x is inside: a
// negative or NaN clip; -0.0 acts as 0.0, as the float comparison does).
inline uint32_t inside_bound(double clip) {
  const float limit = static_cast<float>(clip);
  if (!(limit >= 0.0f)) return 0;
  uint32_t bits;
  std::memcpy(&bits, &limit, 4);
  return (bits & 0x7FFFFFFFu) + 1;
}

// The four 2-bit codes c[4k..4k+3] of a block as byte k (the first in the low bits).
inline void pack_block(const uint32_t* c, uint8_t* codes, int64_t bytes) {
  for (int64_t k = 0; k < bytes; ++k) {
    codes[k] = static_cast<uint8_t>(c[4 * k] | (c[4 * k + 1] << 2) | (c[4 * k + 2] << 4) |
                                    (c[4 * k + 3] << 6));
  }
}

// sign (+1 for x >= 0, -0.0 included; -1 below and for NaN) and codes 1[x >= 0] | 1[|x| <= clip]
// << 1 of `count` fp32 elements given as bits.
inline void encode_block(const uint32_t* v, uint32_t* out, uint32_t* c, int64_t count,
                         uint32_t bound) {
  for (int64_t j = 0; j < count; ++j) {
    const uint32_t bits = v[j], magnitude = bits & 0x7FFFFFFFu;
    const uint32_t number = magnitude <= kInfinity, zero = magnitude == 0;
    const uint32_t positive = (((bits >> 31) ^ 1u) & number) | zero;
    const uint32_t inside = magnitude < bound;
    out[j] = kMinusOne ^ (positive << 31);
    c[j] = positive | (inside << 1);
  }
}

std::vector<torch::Tensor> sign_codes_float(torch::Tensor x, double clip) {
  const int64_t n = x.numel();
  auto sign = torch::empty_like(x);
  auto packed = torch::empty({(n + 3) / 4}, x.options().dtype(torch::kUInt8));
  const uint32_t* in = static_cast<const uint32_t*>(x.data_ptr());
  uint32_t* out = static_cast<uint32_t*>(sign.data_ptr());
  uint8_t* codes = packed.data_ptr<uint8_t>();
  const uint32_t bound = inside_bound(clip);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrain / kBlock, [&](int64_t begin, int64_t end) {
    uint32_t c[kBlock];  // 32-bit codes: the element loop stays in one lane width
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * kBlock;
      if (first + kBlock <= n) {
        encode_block(in + first, out + first, c, kBlock, bound);
        pack_block(c, codes + first / 4, kBlock / 4);
      } else {  // the last block: zero codes past the end
        const int64_t count = n - first;
        std::memset(c, 0, sizeof(c));
        encode_block(in + first, out + first, c, count, bound);
        pack_block(c, codes + first / 4, (count + 3) / 4);
      }
    }
  });
  return {sign, packed};
}

void codes_backward(torch::Tensor packed, c10::optional<torch::Tensor> sign,
                    c10::optional<torch::Tensor> grad, int64_t numel, int64_t one) {
  const torch::Tensor& like = sign.has_value() ? *sign : *grad;
  const uint8_t* codes = packed.data_ptr<uint8_t>();
  uint8_t* s = sign.has_value() ? static_cast<uint8_t*>(sign->data_ptr()) : nullptr;
  uint8_t* g = grad.has_value() ? static_cast<uint8_t*>(grad->data_ptr()) : nullptr;
  if (like.element_size() == 2) {
    codes_backward_kernel<2>(codes, s, g, numel, static_cast<uint64_t>(one) & 0xFFFF);
  } else {
    codes_backward_kernel<4>(codes, s, g, numel, static_cast<uint64_t>(one) & 0xFFFFFFFF);
  }
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sign_codes_float", &sign_codes_float, "sign_codes for fp32");
  m.def("binary_weight", &binary_weight, "MagnitudeAwareSign's weight in a 2- or 4-byte format");
  m.def("weight_grad", &weight_grad, "MagnitudeAwareSign's latent-weight gradient");
  m.def("sign_codes", &sign_codes, "sign(x) and its packed 2-bit codes");
  m.def("codes_backward", &codes_backward, "the +-1 input and the STE mask from the codes");
}
