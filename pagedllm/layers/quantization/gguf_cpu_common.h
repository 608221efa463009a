// Shared by gguf_cpu_kernel.cpp (few rows of x) and gguf_cpu_panel.cpp (8-64 rows):
// the int8 quantization of x and the AVX2 integer dot product of one 32-column block.
// (gguf_kernels.py puts this file's hash into the build flags, so editing it rebuilds.)
#pragma once
#include <immintrin.h>
#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace pagedllm_gguf {

constexpr int64_t kBlock = 32;

struct QuantizedX {
  const int8_t* q;     // [M, K]
  const float* scale;  // [M, K/32]
  const float* sum;    // [M, K/32]: scale * sum(q) of the block
};

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// One 32-float block -> int8, rounding to nearest even as std::nearbyint does.
inline void quantize_block(const float* src, int8_t* q, float* scale, float* sum) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(src + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float d = _mm_cvtss_f32(m) / 127.f;
  const __m256 inv = _mm256_set1_ps(d > 0.f ? 1.f / d : 0.f);
  __m256i r[4];
  for (int i = 0; i < 4; ++i) r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
  const __m256i total = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permutevar8x32_epi32(packed, order));
  *scale = d;
  *sum = d * static_cast<float>(hsum_i32(total));
}

// Per calling thread, reused across calls: no allocation per decode step.
inline QuantizedX quantize_x(const float* x, int64_t M, int64_t K) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> scale, sum;
  const int64_t nb = M * (K / kBlock);
  if (static_cast<int64_t>(q.size()) < M * K) q.resize(M * K);
  if (static_cast<int64_t>(scale.size()) < nb) scale.resize(nb), sum.resize(nb);
  for (int64_t i = 0; i < nb; ++i)
    quantize_block(x + i * kBlock, q.data() + i * kBlock, scale.data() + i, sum.data() + i);
  return {q.data(), scale.data(), sum.data()};
}

inline float to_float(float v) { return v; }
inline float to_float(at::Half v) { return _cvtsh_ss(v.x); }
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// 16 bytes -> 32 values: low nibbles (bytes 0..15), then high nibbles (16..31).
inline __m256i unpack_u4(const uint8_t* p) {
  const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i shifted = _mm256_srlv_epi64(raw, _mm256_setr_epi64x(0, 0, 4, 4));
  return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

// 8 int32 lanes; lane i sums the products of bytes 4i..4i+3.
template <int BITS>
inline __m256i dot32(__m256i w, __m256i qx) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (BITS == 4) {  // w unsigned (0..15)
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, qx), ones);
  } else {  // w signed: |w| * (x with w's sign)
    const __m256i aw = _mm256_sign_epi8(w, w);
    const __m256i sx = _mm256_sign_epi8(qx, w);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
  }
}

// Bytes of one packed 32-column block of a weight row.
template <int BITS>
constexpr int64_t kBlockBytes = BITS == 4 ? 16 : 32;

// Block b's scale * sx, broadcast over the 8 int32 lanes of its dot product: one per
// block (groups of 32), or one per 16-column half (groups of 16: lanes 0-3, 4-7).
// comb holds the products per group. Shared by the tiles and the panels, so that a
// row's sum is formed alike in both.
template <int G>
inline __m256 block_scale(const float* comb, int64_t b) {
  if constexpr (G == kBlock) return _mm256_broadcast_ss(comb + b);
  return _mm256_set_m128(_mm_broadcast_ss(comb + 2 * b + 1), _mm_broadcast_ss(comb + 2 * b));
}

// The sums of a, b, c, d's lanes.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Rows of x from which gguf_linear uses the panel kernel (gguf_cpu_panel.cpp).
constexpr int64_t kPanelMinRows = 3;

// y [M, N] = x W^T through weight panels unpacked once for all rows of x.
void panel_linear(const QuantizedX& qx, int64_t M, int64_t K, const torch::Tensor& qweight,
                  const torch::Tensor& scales, const torch::Tensor& mins, int64_t bits,
                  int64_t group, float* y);

}  // namespace pagedllm_gguf
