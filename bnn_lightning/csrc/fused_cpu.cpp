// One-pass CPU kernels of bnn_lightning's fused binary conv: see bnn_lightning/fused_cpu.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BNN_X86 1
#include <immintrin.h>
#endif

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
// `clip` is the largest magnitude inside in each lane; `any` is 0 where none is (kHigh else).
inline Word encode(uint64_t v, uint64_t infinity, uint64_t clip, uint64_t minus_one,
                   uint64_t any) {
  const uint64_t magnitude = v & ~kHigh;
  const uint64_t number = at_most(magnitude, infinity);
  const uint64_t zero = at_most(magnitude, 0);
  const uint64_t positive = number & (~v | zero) & kHigh;
  const uint64_t inside = at_most(magnitude, clip) & any;
  const uint64_t gathered =
      (((positive >> 15) * kGather) >> 56) | (((inside >> 15) * kGather) >> 55);
  return {minus_one ^ positive, static_cast<uint8_t>(gathered)};
}


// Vector kernels, chosen at run time by the CPU's instruction sets (level 2: AVX-512 BW with
// BMI2, level 1: AVX2, level 0: the portable kernels below). They work on groups of 32 elements,
// whose 2-bit codes are one little-endian 64-bit word: element j's 1[x >= 0] at bit 2j and its
// 1[|x| <= clip] at bit 2j + 1, the same bytes as the portable kernels write. A tensor's last
// (numel % 32) elements go to the portable kernels.
constexpr int64_t kGroup = 32;
constexpr uint64_t kEven = 0x5555555555555555ULL, kOdd = 0xAAAAAAAAAAAAAAAAULL;

int64_t best_level() {
#ifdef BNN_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("bmi2")) {
    return 2;
  }
  if (__builtin_cpu_supports("avx2")) return 1;
#endif
  return 0;
}

// |x| <= clip on the bits of 2-byte floats: magnitude < the returned bound (0 when no x is
// inside: a negative or NaN clip; -0.0 acts as 0.0).
inline uint16_t inside_bound16(int64_t clip, uint16_t infinity) {
  const uint16_t bits = clip & 0xFFFF, magnitude = bits & 0x7FFF;
  if (((bits & 0x8000) && magnitude) || magnitude > infinity) return 0;
  return magnitude + 1;
}

// Bits 0..31 of `x` moved to the even bits of the result (bit k to bit 2k).
inline uint64_t spread(uint64_t x) {
  x = (x | (x << 16)) & 0x0000FFFF0000FFFFULL;
  x = (x | (x << 8)) & 0x00FF00FF00FF00FFULL;
  x = (x | (x << 4)) & 0x0F0F0F0F0F0F0F0FULL;
  x = (x | (x << 2)) & 0x3333333333333333ULL;
  return (x | (x << 1)) & kEven;
}

#ifdef BNN_X86
#define BNN_AVX512 __attribute__((target("avx512f,avx512bw,bmi2")))
#define BNN_AVX2 __attribute__((target("avx2")))

// Bytes: out holds one byte an element, 2 where x >= 0 and 0 elsewhere (the unsigned 8-bit
// input of an int8 convolution with zero point 1: +-1), instead of the 2-byte sign.
template <bool Bytes>
BNN_AVX512 void sign_codes16_avx512(const uint16_t* in, void* out, uint8_t* codes,
                                    int64_t begin, int64_t end, uint16_t infinity,
                                    uint16_t bound, uint16_t one) {
  const __m512i low = _mm512_set1_epi16(0x7FFF), inf = _mm512_set1_epi16(infinity);
  const __m512i limit = _mm512_set1_epi16(bound), plus = _mm512_set1_epi16(one);
  const __m512i minus = _mm512_set1_epi16(one | 0x8000), zeros = _mm512_setzero_si512();
  const __m512i twos = _mm512_set1_epi8(2);
  for (int64_t i = begin; i < end; ++i) {
    const __m512i v = _mm512_loadu_si512(in + kGroup * i);
    const __m512i magnitude = _mm512_and_si512(v, low);
    const __mmask32 positive =
        (_mm512_cmpge_epi16_mask(v, zeros) & _mm512_cmple_epu16_mask(magnitude, inf)) |
        _mm512_testn_epi16_mask(magnitude, magnitude);
    const __mmask32 inside = _mm512_cmplt_epu16_mask(magnitude, limit);
    if constexpr (Bytes) {
      const __m512i bytes = _mm512_maskz_mov_epi8(static_cast<__mmask64>(positive), twos);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint8_t*>(out) + kGroup * i),
                          _mm512_castsi512_si256(bytes));
    } else {
      _mm512_storeu_si512(static_cast<uint16_t*>(out) + kGroup * i,
                          _mm512_mask_blend_epi16(positive, minus, plus));
    }
    const uint64_t word = _pdep_u64(positive, kEven) | _pdep_u64(inside, kOdd);
    std::memcpy(codes + 8 * i, &word, 8);
  }
}

BNN_AVX512 void sign_codes32_avx512(const uint32_t* in, uint32_t* out, uint8_t* codes,
                                    int64_t begin, int64_t end, uint32_t bound) {
  const __m512i low = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
  const __m512i limit = _mm512_set1_epi32(bound), plus = _mm512_set1_epi32(0x3F800000);
  const __m512i minus = _mm512_set1_epi32(0xBF800000), zeros = _mm512_setzero_si512();
  for (int64_t i = begin; i < end; ++i) {
    uint64_t positive = 0, inside = 0;
    for (int h = 0; h < 2; ++h) {
      const int64_t at = kGroup * i + 16 * h;
      const __m512i v = _mm512_loadu_si512(in + at);
      const __m512i magnitude = _mm512_and_si512(v, low);
      const __mmask16 p =
          (_mm512_cmpge_epi32_mask(v, zeros) & _mm512_cmple_epu32_mask(magnitude, inf)) |
          _mm512_testn_epi32_mask(magnitude, magnitude);
      _mm512_storeu_si512(out + at, _mm512_mask_blend_epi32(p, minus, plus));
      positive |= uint64_t(p) << (16 * h);
      inside |= uint64_t(_mm512_cmplt_epu32_mask(magnitude, limit)) << (16 * h);
    }
    const uint64_t word = _pdep_u64(positive, kEven) | _pdep_u64(inside, kOdd);
    std::memcpy(codes + 8 * i, &word, 8);
  }
}

BNN_AVX512 void codes_backward16_avx512(const uint8_t* codes, uint16_t* s, uint16_t* g,
                                        int64_t begin, int64_t end, uint16_t one) {
  const __m512i plus = _mm512_set1_epi16(one), minus = _mm512_set1_epi16(one | 0x8000);
  for (int64_t i = begin; i < end; ++i) {
    uint64_t word;
    std::memcpy(&word, codes + 8 * i, 8);
    const int64_t at = kGroup * i;
    if (s) {
      const __mmask32 positive = static_cast<__mmask32>(_pext_u64(word, kEven));
      _mm512_storeu_si512(s + at, _mm512_mask_blend_epi16(positive, minus, plus));
    }
    if (g) {
      const __mmask32 inside = static_cast<__mmask32>(_pext_u64(word, kOdd));
      _mm512_storeu_si512(g + at, _mm512_maskz_loadu_epi16(inside, g + at));
    }
  }
}

BNN_AVX512 void codes_backward32_avx512(const uint8_t* codes, uint32_t* s, uint32_t* g,
                                        int64_t begin, int64_t end) {
  const __m512i plus = _mm512_set1_epi32(0x3F800000), minus = _mm512_set1_epi32(0xBF800000);
  for (int64_t i = begin; i < end; ++i) {
    uint64_t word;
    std::memcpy(&word, codes + 8 * i, 8);
    const uint64_t positive = _pext_u64(word, kEven), inside = _pext_u64(word, kOdd);
    for (int h = 0; h < 2; ++h) {
      const int64_t at = kGroup * i + 16 * h;
      const __mmask16 p = static_cast<__mmask16>(positive >> (16 * h));
      const __mmask16 k = static_cast<__mmask16>(inside >> (16 * h));
      if (s) _mm512_storeu_si512(s + at, _mm512_mask_blend_epi32(p, minus, plus));
      if (g) _mm512_storeu_si512(g + at, _mm512_maskz_loadu_epi32(k, g + at));
    }
  }
}

// AVX2 has no unsigned or mask compares: the magnitudes (sign bit clear) compare as signed
// integers, and a byte mask of a 16-bit lane holds its bit twice (bits 2j and 2j + 1).
template <bool Bytes>
BNN_AVX2 void sign_codes16_avx2(const uint16_t* in, void* out, uint8_t* codes, int64_t begin,
                                int64_t end, uint16_t infinity, uint16_t bound, uint16_t one) {
  const __m256i low = _mm256_set1_epi16(0x7FFF), above = _mm256_set1_epi16(infinity + 1);
  const __m256i limit = _mm256_set1_epi16(bound), plus = _mm256_set1_epi16(one);
  const __m256i minus = _mm256_set1_epi16(static_cast<int16_t>(one | 0x8000));
  const __m256i all = _mm256_set1_epi16(-1), zeros = _mm256_setzero_si256();
  const __m256i twos = _mm256_set1_epi8(2);
  for (int64_t i = begin; i < end; ++i) {
    uint64_t word = 0;
    __m256i positives[2];
    for (int h = 0; h < 2; ++h) {
      const int64_t at = kGroup * i + 16 * h;
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + at));
      const __m256i magnitude = _mm256_and_si256(v, low);
      const __m256i positive = _mm256_or_si256(
          _mm256_and_si256(_mm256_cmpgt_epi16(v, all), _mm256_cmpgt_epi16(above, magnitude)),
          _mm256_cmpeq_epi16(magnitude, zeros));
      const __m256i inside = _mm256_cmpgt_epi16(limit, magnitude);
      if constexpr (Bytes) {
        positives[h] = positive;
      } else {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + at),
                            _mm256_blendv_epi8(minus, plus, positive));
      }
      const uint32_t p = static_cast<uint32_t>(_mm256_movemask_epi8(positive));
      const uint32_t k = static_cast<uint32_t>(_mm256_movemask_epi8(inside));
      word |= uint64_t((p & 0x55555555u) | (k & 0xAAAAAAAAu)) << (32 * h);
    }
    if constexpr (Bytes) {  // the lanes' masks narrowed to bytes; packs interleaves 128-bit halves
      const __m256i packed = _mm256_packs_epi16(positives[0], positives[1]);
      const __m256i ordered = _mm256_permute4x64_epi64(packed, 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint8_t*>(out) + kGroup * i),
                          _mm256_and_si256(ordered, twos));
    }
    std::memcpy(codes + 8 * i, &word, 8);
  }
}

BNN_AVX2 void sign_codes32_avx2(const uint32_t* in, uint32_t* out, uint8_t* codes,
                                int64_t begin, int64_t end, uint32_t bound) {
  const __m256i low = _mm256_set1_epi32(0x7FFFFFFF), above = _mm256_set1_epi32(0x7F800001);
  const __m256i limit = _mm256_set1_epi32(static_cast<int32_t>(bound));
  const __m256i plus = _mm256_set1_epi32(0x3F800000);
  const __m256i minus = _mm256_set1_epi32(static_cast<int32_t>(0xBF800000u));
  const __m256i all = _mm256_set1_epi32(-1), zeros = _mm256_setzero_si256();
  for (int64_t i = begin; i < end; ++i) {
    uint64_t positive = 0, inside = 0;
    for (int q = 0; q < 4; ++q) {
      const int64_t at = kGroup * i + 8 * q;
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + at));
      const __m256i magnitude = _mm256_and_si256(v, low);
      const __m256i p = _mm256_or_si256(
          _mm256_and_si256(_mm256_cmpgt_epi32(v, all), _mm256_cmpgt_epi32(above, magnitude)),
          _mm256_cmpeq_epi32(magnitude, zeros));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + at), _mm256_blendv_epi8(minus, plus, p));
      const __m256i k = _mm256_cmpgt_epi32(limit, magnitude);
      positive |= uint64_t(_mm256_movemask_ps(_mm256_castsi256_ps(p))) << (8 * q);
      inside |= uint64_t(_mm256_movemask_ps(_mm256_castsi256_ps(k))) << (8 * q);
    }
    const uint64_t word = spread(positive) | (spread(inside) << 1);
    std::memcpy(codes + 8 * i, &word, 8);
  }
}

// The signs where `positive` is set (lanes of all ones) into s, the gradient zeroed where `inside`
// is not into g; either may be null.
BNN_AVX2 inline void store_avx2(__m256i positive, __m256i inside, __m256i minus, __m256i plus,
                                void* s, void* g) {
  if (s) {
    _mm256_storeu_si256(static_cast<__m256i*>(s), _mm256_blendv_epi8(minus, plus, positive));
  }
  if (g) {
    __m256i* to = static_cast<__m256i*>(g);
    _mm256_storeu_si256(to, _mm256_and_si256(_mm256_loadu_si256(to), inside));
  }
}

BNN_AVX2 void codes_backward16_avx2(const uint8_t* codes, uint16_t* s, uint16_t* g,
                                    int64_t begin, int64_t end, uint16_t one) {
  const __m256i plus = _mm256_set1_epi16(one);
  const __m256i minus = _mm256_set1_epi16(static_cast<int16_t>(one | 0x8000));
  // lane j of each 128-bit half tests bit 2j (positive) and 2j + 1 (inside) of its 16 bits
  const __m256i first = _mm256_setr_epi16(1, 4, 16, 64, 256, 1024, 4096, 16384, 1, 4, 16, 64,
                                          256, 1024, 4096, 16384);
  const __m256i second = _mm256_slli_epi16(first, 1);
  for (int64_t i = begin; i < end; ++i) {
    uint64_t word;
    std::memcpy(&word, codes + 8 * i, 8);
    for (int h = 0; h < 2; ++h) {
      const int64_t at = kGroup * i + 16 * h;
      const uint32_t half = static_cast<uint32_t>(word >> (32 * h));
      const __m256i v = _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(half >> 16)),
                                         _mm_set1_epi16(static_cast<int16_t>(half & 0xFFFF)));
      store_avx2(_mm256_cmpeq_epi16(_mm256_and_si256(v, first), first),
                 _mm256_cmpeq_epi16(_mm256_and_si256(v, second), second), minus, plus,
                 s ? s + at : nullptr, g ? g + at : nullptr);
    }
  }
}

BNN_AVX2 void codes_backward32_avx2(const uint8_t* codes, uint32_t* s, uint32_t* g,
                                    int64_t begin, int64_t end) {
  const __m256i plus = _mm256_set1_epi32(0x3F800000);
  const __m256i minus = _mm256_set1_epi32(static_cast<int32_t>(0xBF800000u));
  const __m256i first = _mm256_setr_epi32(1, 4, 16, 64, 256, 1024, 4096, 16384);
  const __m256i second = _mm256_slli_epi32(first, 1);
  for (int64_t i = begin; i < end; ++i) {
    uint64_t word;
    std::memcpy(&word, codes + 8 * i, 8);
    for (int q = 0; q < 4; ++q) {
      const int64_t at = kGroup * i + 8 * q;
      const __m256i v = _mm256_set1_epi32(static_cast<int32_t>((word >> (16 * q)) & 0xFFFF));
      store_avx2(_mm256_cmpeq_epi32(_mm256_and_si256(v, first), first),
                 _mm256_cmpeq_epi32(_mm256_and_si256(v, second), second), minus, plus,
                 s ? s + at : nullptr, g ? g + at : nullptr);
    }
  }
}

// PReLU backward (see prelu_backward below), AVX-512 only: float values from bf16 by a shift,
// back by ATen's AVX-512 rounding (to nearest even, NaN to 0xFFFF), so the bits are ATen's.
BNN_AVX512 inline __m512 bf16_to_float(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

BNN_AVX512 inline __m256i float_to_bf16(__m512 f) {
  const __m512i v = _mm512_castps_si512(f);
  __m512i t = _mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1));
  t = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(t, _mm512_set1_epi32(0x7FFF)), v), 16);
  t = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_ORD_Q), _mm512_set1_epi32(0xFFFF), t);
  return _mm512_cvtusepi32_epi16(t);
}

// grad_z = z > 0 ? g : slope * g and full = z > 0 ? 0 : z * g on 16 floats (ATen's
// _prelu_kernel_backward, element for element).
struct PReLUGrads {
  __m512 grad, full;
};

BNN_AVX512 inline PReLUGrads prelu_grads(__m512 z, __m512 g, __m512 slope) {
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 positive = _mm512_cmp_ps_mask(z, zero, _CMP_GT_OQ);
  return {_mm512_mask_blend_ps(positive, _mm512_mul_ps(slope, g), g),
          _mm512_mask_blend_ps(positive, _mm512_mul_ps(z, g), zero)};
}

// n elements from z, g into grad_z (and full unless null): the slope one float an element
// (`slopes`, PerElement: channels innermost) or the same for all (*slopes).
template <bool PerElement>
BNN_AVX512 void prelu_backward16_avx512(const uint16_t* z, const uint16_t* g,
                                        const float* slopes, uint16_t* grad_z, uint16_t* full,
                                        int64_t n) {
  const __m512 same = _mm512_set1_ps(*slopes);
  for (int64_t k = 0; k < n; k += 32) {
    const __mmask32 m = n - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (n - k)) - 1;
    const __m512i zv = _mm512_maskz_loadu_epi16(m, z + k), gv = _mm512_maskz_loadu_epi16(m, g + k);
    __m256i out_grad[2], out_full[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i zh = h ? _mm512_extracti64x4_epi64(zv, 1) : _mm512_castsi512_si256(zv);
      const __m256i gh = h ? _mm512_extracti64x4_epi64(gv, 1) : _mm512_castsi512_si256(gv);
      const __mmask16 mh = static_cast<__mmask16>(m >> (16 * h));
      const __m512 slope = PerElement ? _mm512_maskz_loadu_ps(mh, slopes + k + 16 * h) : same;
      const PReLUGrads r = prelu_grads(bf16_to_float(zh), bf16_to_float(gh), slope);
      out_grad[h] = float_to_bf16(r.grad);
      out_full[h] = float_to_bf16(r.full);
    }
    _mm512_mask_storeu_epi16(
        grad_z + k, m, _mm512_inserti64x4(_mm512_castsi256_si512(out_grad[0]), out_grad[1], 1));
    if (full) {
      _mm512_mask_storeu_epi16(
          full + k, m, _mm512_inserti64x4(_mm512_castsi256_si512(out_full[0]), out_full[1], 1));
    }
  }
}

template <bool PerElement>
BNN_AVX512 void prelu_backward32_avx512(const float* z, const float* g, const float* slopes,
                                        float* grad_z, float* full, int64_t n) {
  const __m512 same = _mm512_set1_ps(*slopes);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = n - k >= 16 ? ~__mmask16(0) : (__mmask16(1) << (n - k)) - 1;
    const __m512 slope = PerElement ? _mm512_maskz_loadu_ps(m, slopes + k) : same;
    const PReLUGrads r =
        prelu_grads(_mm512_maskz_loadu_ps(m, z + k), _mm512_maskz_loadu_ps(m, g + k), slope);
    _mm512_mask_storeu_ps(grad_z + k, m, r.grad);
    if (full) _mm512_mask_storeu_ps(full + k, m, r.full);
  }
}
#endif  // BNN_X86

// The vector kernels over whole groups [0, numel / 32) at `level`; returns the groups done (0
// at level 0 or where the build has no vector kernels).
// u8: 2-byte floats only, the sign written as bytes (see sign_codes16_avx512).
int64_t vector_sign_codes(const void* in, void* out, uint8_t* codes, int64_t numel, int bytes,
                          int64_t level, uint16_t infinity, uint32_t bound, uint16_t one,
                          bool u8 = false) {
#ifdef BNN_X86
  const int64_t groups = level > 0 ? numel / kGroup : 0;
  at::parallel_for(0, groups, kGrain / kGroup, [&](int64_t begin, int64_t end) {
    if (bytes == 2) {
      auto x = static_cast<const uint16_t*>(in);
      const uint16_t b = static_cast<uint16_t>(bound);
      if (level >= 2 && u8) sign_codes16_avx512<true>(x, out, codes, begin, end, infinity, b, one);
      else if (level >= 2) sign_codes16_avx512<false>(x, out, codes, begin, end, infinity, b, one);
      else if (u8) sign_codes16_avx2<true>(x, out, codes, begin, end, infinity, b, one);
      else sign_codes16_avx2<false>(x, out, codes, begin, end, infinity, b, one);
    } else {
      auto x = static_cast<const uint32_t*>(in);
      auto o = static_cast<uint32_t*>(out);
      if (level >= 2) sign_codes32_avx512(x, o, codes, begin, end, bound);
      else sign_codes32_avx2(x, o, codes, begin, end, bound);
    }
  });
  return groups;
#else
  return 0;
#endif
}

int64_t vector_codes_backward(const uint8_t* codes, void* s, void* g, int64_t numel, int bytes,
                              int64_t level, uint16_t one) {
#ifdef BNN_X86
  const int64_t groups = level > 0 ? numel / kGroup : 0;
  at::parallel_for(0, groups, kGrain / kGroup, [&](int64_t begin, int64_t end) {
    if (bytes == 2) {
      auto sign = static_cast<uint16_t*>(s);
      auto grad = static_cast<uint16_t*>(g);
      if (level >= 2) codes_backward16_avx512(codes, sign, grad, begin, end, one);
      else codes_backward16_avx2(codes, sign, grad, begin, end, one);
    } else {
      auto sign = static_cast<uint32_t*>(s);
      auto grad = static_cast<uint32_t*>(g);
      if (level >= 2) codes_backward32_avx512(codes, sign, grad, begin, end);
      else codes_backward32_avx2(codes, sign, grad, begin, end);
    }
  });
  return groups;
#else
  return 0;
#endif
}

}  // namespace

// 2-byte floats (infinity and one: the dtype's bit patterns; clip: the bits of clip rounded to
// the dtype): whole groups in the vector kernels at `level`, the rest four to a 64-bit word.
// The bytes 2 * 1[x >= 0] of a word's four elements, from its codes (1[x >= 0] at bits 0, 2, 4,
// 6): bit 2k moves to bit 8k + 1.
inline uint32_t sign_bytes(uint8_t codes) {
  const uint32_t c = codes;
  return ((c & 1) << 1) | ((c & 4) << 7) | ((c & 16) << 13) | ((c & 64) << 19);
}

// 2-byte floats (infinity and one: the dtype's bit patterns; clip: the bits of clip rounded to
// the dtype): whole groups in the vector kernels at `level`, the rest four to a 64-bit word.
// u8: the sign as bytes 2 * 1[x >= 0] (uint8), the input of an int8 convolution with zero point
// 1, instead of +-1 in x's dtype.
std::vector<torch::Tensor> sign_codes(torch::Tensor x, int64_t infinity, int64_t clip,
                                      int64_t one, int64_t level, bool u8) {
  const int64_t n = x.numel();
  auto sign = u8 ? torch::empty_like(x, x.options().dtype(torch::kUInt8)) : torch::empty_like(x);
  auto packed = torch::empty({(n + 3) / 4}, x.options().dtype(torch::kUInt8));
  const uint8_t* in = static_cast<const uint8_t*>(x.data_ptr());
  uint8_t* out = static_cast<uint8_t*>(sign.data_ptr());
  uint8_t* codes = packed.data_ptr<uint8_t>();
  const uint16_t inf16 = infinity & 0xFFFF, one16 = one & 0xFFFF;
  const uint16_t bound = inside_bound16(clip, inf16);
  const int64_t done =
      kGroup * vector_sign_codes(in, out, codes, n, 2, level, inf16, bound, one16, u8);
  const uint64_t inf4 = lanes(inf16), clip4 = lanes(bound ? bound - 1 : 0);
  const uint64_t minus4 = lanes(one16 | 0x8000), any = bound ? kHigh : 0;
  const int64_t words = n / 4;
  at::parallel_for(done / 4, words, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      uint64_t v;
      std::memcpy(&v, in + 8 * w, 8);
      const Word word = encode(v, inf4, clip4, minus4, any);
      if (u8) {
        const uint32_t bytes = sign_bytes(word.codes);
        std::memcpy(out + 4 * w, &bytes, 4);
      } else {
        std::memcpy(out + 8 * w, &word.sign, 8);
      }
      codes[w] = word.codes;
    }
  });
  const int64_t tail = n - 4 * words;
  if (tail) {  // the last 1-3 elements, zero-padded to a word
    uint64_t v = 0;
    std::memcpy(&v, in + 8 * words, 2 * tail);
    const Word word = encode(v, inf4, clip4, minus4, any);
    if (u8) {
      const uint32_t bytes = sign_bytes(word.codes);
      std::memcpy(out + 4 * words, &bytes, tail);
    } else {
      std::memcpy(out + 8 * words, &word.sign, 2 * tail);
    }
    codes[words] = word.codes & static_cast<uint8_t>((1 << (2 * tail)) - 1);
  }
  return {sign, packed};
}

// +1 or -1 (int8) from the sign bit of each 2-byte float: the signs of a binary weight +-scale[c]
// for an int8 convolution (+scale, +0.0 give +1; any layout, element for element).
torch::Tensor weight_signs(torch::Tensor w) {
  auto out = torch::empty_like(w, w.options().dtype(torch::kInt8));
  const uint16_t* in = static_cast<const uint16_t*>(w.data_ptr());
  int8_t* o = out.data_ptr<int8_t>();
  at::parallel_for(0, w.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) o[i] = (in[i] & 0x8000) ? -1 : 1;
  });
  return out;
}

// The +-1 input rebuilt from the codes into sign (if given), and grad (if given, same memory
// order) zeroed where the codes say |x| > clip: dense floats of Bytes bytes each (2 or 4; one is
// the bit pattern of 1.0), numel elements. Whole groups go to the vector kernels at `level`; for
// the rest, each code byte stands for Bytes 64-bit-word halves of four elements: two 256-entry
// tables give their signs and masks.
template <int Bytes>
void codes_backward_kernel(const uint8_t* codes, uint8_t* s, uint8_t* g, int64_t numel,
                           uint64_t one, int64_t level) {
  const int64_t done = kGroup * vector_codes_backward(codes, s, g, numel, Bytes, level,
                                                      static_cast<uint16_t>(one & 0xFFFF));
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
  at::parallel_for(done / 4, full, kGrain, [&](int64_t begin, int64_t end) {
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

std::vector<torch::Tensor> sign_codes_float(torch::Tensor x, double clip, int64_t level) {
  const int64_t n = x.numel();
  auto sign = torch::empty_like(x);
  auto packed = torch::empty({(n + 3) / 4}, x.options().dtype(torch::kUInt8));
  const uint32_t* in = static_cast<const uint32_t*>(x.data_ptr());
  uint32_t* out = static_cast<uint32_t*>(sign.data_ptr());
  uint8_t* codes = packed.data_ptr<uint8_t>();
  const uint32_t bound = inside_bound(clip);
  const int64_t done = kGroup * vector_sign_codes(in, out, codes, n, 4, level, 0, bound, 0);
  const int64_t blocks = (n - done + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrain / kBlock, [&](int64_t begin, int64_t end) {
    uint32_t c[kBlock];  // 32-bit codes: the element loop stays in one lane width
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = done + b * kBlock;
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
                    c10::optional<torch::Tensor> grad, int64_t numel, int64_t one,
                    int64_t level) {
  const torch::Tensor& like = sign.has_value() ? *sign : *grad;
  const uint8_t* codes = packed.data_ptr<uint8_t>();
  uint8_t* s = sign.has_value() ? static_cast<uint8_t*>(sign->data_ptr()) : nullptr;
  uint8_t* g = grad.has_value() ? static_cast<uint8_t*>(grad->data_ptr()) : nullptr;
  if (like.element_size() == 2) {
    codes_backward_kernel<2>(codes, s, g, numel, static_cast<uint64_t>(one) & 0xFFFF, level);
  } else {
    codes_backward_kernel<4>(codes, s, g, numel, static_cast<uint64_t>(one) & 0xFFFFFFFF, level);
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

// ATen's PReLU backward for dense z, g (same strides; bf16 or fp32) in one pass, AVX-512 only:
// grad_z = z > 0 ? g : slope[c] * g and, when `weight` is set, the full-size slope gradient
// z > 0 ? 0 : z * g (the caller reduces it). Element i of the memory order has channel
// (i / inner) % channels: inner = H * W for NCHW, 1 for channels_last (the slopes vary
// element by element), the whole tensor for one shared slope (channels = 1).
std::vector<torch::Tensor> prelu_backward(torch::Tensor z, torch::Tensor g, torch::Tensor slope,
                                          int64_t channels, int64_t inner, bool weight) {
  TORCH_CHECK(best_level() >= 2, "prelu_backward needs AVX-512");
  TORCH_CHECK(z.scalar_type() == g.scalar_type() && z.strides() == g.strides(),
              "prelu_backward: z and g differ in dtype or strides");
  TORCH_CHECK(slope.scalar_type() == at::kFloat && slope.is_contiguous() &&
                  slope.numel() == channels,
              "prelu_backward: the slope must be `channels` contiguous floats");
  auto grad_z = torch::empty_like(z);
  auto full = weight ? torch::empty_like(z) : torch::Tensor();
  const bool bf16 = z.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || z.scalar_type() == at::kFloat, "prelu_backward: bf16 or fp32 only");
  const int64_t bytes = bf16 ? 2 : 4;
  const uint8_t* zp = static_cast<const uint8_t*>(z.data_ptr());
  const uint8_t* gp = static_cast<const uint8_t*>(g.data_ptr());
  uint8_t* op = static_cast<uint8_t*>(grad_z.data_ptr());
  uint8_t* fp = weight ? static_cast<uint8_t*>(full.data_ptr()) : nullptr;
  const float* s = slope.data_ptr<float>();
#ifdef BNN_X86
  at::parallel_for(0, z.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      // a run: to the end of the channels (inner == 1) or of one channel's elements
      const int64_t c = (i / inner) % channels;
      const int64_t n = std::min(end - i, inner == 1 ? channels - c : inner - i % inner);
      const int64_t at = i * bytes;
      if (bf16) {
        auto run = inner == 1 ? prelu_backward16_avx512<true> : prelu_backward16_avx512<false>;
        run(reinterpret_cast<const uint16_t*>(zp + at), reinterpret_cast<const uint16_t*>(gp + at),
            s + c, reinterpret_cast<uint16_t*>(op + at),
            fp ? reinterpret_cast<uint16_t*>(fp + at) : nullptr, n);
      } else {
        auto run = inner == 1 ? prelu_backward32_avx512<true> : prelu_backward32_avx512<false>;
        run(reinterpret_cast<const float*>(zp + at), reinterpret_cast<const float*>(gp + at),
            s + c, reinterpret_cast<float*>(op + at),
            fp ? reinterpret_cast<float*>(fp + at) : nullptr, n);
      }
      i += n;
    }
  });
#endif
  return {grad_z, full};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("best_level", &best_level, "the fastest kernels this CPU runs: 2 AVX-512, 1 AVX2, 0");
  m.def("sign_codes_float", &sign_codes_float, "sign_codes for fp32");
  m.def("binary_weight", &binary_weight, "MagnitudeAwareSign's weight in a 2- or 4-byte format");
  m.def("weight_grad", &weight_grad, "MagnitudeAwareSign's latent-weight gradient");
  m.def("sign_codes", &sign_codes, "sign(x) (or 2 * 1[x >= 0] as bytes) and its 2-bit codes");
  m.def("weight_signs", &weight_signs, "+-1 (int8) from the sign bits of 2-byte floats");
  m.def("codes_backward", &codes_backward, "the +-1 input and the STE mask from the codes");
  m.def("prelu_backward", &prelu_backward, "ATen's PReLU backward in one pass (AVX-512)");
}
