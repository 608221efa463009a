// y = x W^T with W kept packed (GGUF weights repacked by gguf_repack.py), on x86 AVX2.
//
// Packed weight of N rows x K columns (K % 32 == 0), in 32-column blocks b:
//   bits == 4: qweight uint8 [N, K/2]; block b of row n is 16 bytes, byte j holds
//              q[32b + j] (low nibble) and q[32b + j + 16] (high nibble), q in 0..15
//   bits == 8: qweight int8 [N, K]; q[n, k] as is (-128..127)
//   scales [N, K/group] float16 or float32, group 32 or 16 (16 only for 8 bits)
//   mins   [N, K/32] same dtype as scales, or empty (group 32 only)
//   W[n, k] = scales[n, k / group] * q[n, k] + mins[n, k / 32]
//
// As llama.cpp does, x is quantized per 32-column block to int8 (symmetric, scale
// sx = max|x| / 127), so each block's dot product is an integer dot product
// (vpmaddubsw + vpmaddwd), scaled by scale * sx in float; the min term is
// mins . (sx * sum(qx)), one vector dot product per row. A tile is R weight rows by
// T rows of x: each weight block is unpacked once per T rows of x, each x block loaded
// once per R weight rows (batch-1 decode: R = 4, T = 1, four independent sums; two
// rows: R = 2, T = 2). Before a tile, scale * sx is computed for all its blocks (F16C
// for float16 scales). Tiles of weight rows are split across threads. From
// kPanelMinRows rows of x, gguf_cpu_panel.cpp runs instead (same numerics, each
// weight block unpacked once for all rows of x).
#include <ATen/Parallel.h>

#include "gguf_cpu_common.h"
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

using namespace pagedllm_gguf;
constexpr int64_t kAhead = 4;  // prefetch the weight rows this many tiles ahead

// out[g] = s[g] * sx[g * group / 32] for the ng scales of one weight row.
template <typename S>
void scale_row(const S* s, const float* sx, int64_t ng, int64_t group, float* out) {
  int64_t g = 0;
  if (group == kBlock)
    for (; g + 8 <= ng; g += 8) _mm256_storeu_ps(out + g, _mm256_mul_ps(load8(s + g), load8(sx + g)));
  for (; g < ng; ++g) out[g] = to_float(s[g]) * sx[g * group / kBlock];
}

// The first t (< 8) values at p as floats, the other lanes 0 (masked loads: nothing read
// past p + t; float16 values are loaded in pairs, so t is even for them).
inline __m256 load_tail(const float* p, int64_t t) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(t)), lanes));
}
inline __m256 load_tail(const at::Half* p, int64_t t) {
  const __m128i pairs = _mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(t / 2)), _mm_setr_epi32(0, 1, 2, 3));
  return _mm256_cvtph_ps(_mm_maskload_epi32(reinterpret_cast<const int*>(p), pairs));
}

// sum_b mins[b] * xsum[b], as 8 partial sums.
template <typename S>
__m256 min_term(const S* mins, const float* xsum, int64_t nb) {
  __m256 acc = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) acc = _mm256_fmadd_ps(load8(mins + b), load8(xsum + b), acc);
  const int64_t t = nb - b;
  if (t == 0) return acc;
  if (std::is_same_v<S, float> || t % 2 == 0)
    return _mm256_fmadd_ps(load_tail(mins + b, t), load_tail(xsum + b, t), acc);
  alignas(32) float m[8] = {}, xs[8] = {};
  for (int64_t i = 0; i < t; ++i) m[i] = to_float(mins[b + i]), xs[i] = xsum[b + i];
  return _mm256_fmadd_ps(_mm256_load_ps(m), _mm256_load_ps(xs), acc);
}

template <int BITS, typename S, int G>
struct Kernel {
  static constexpr int64_t kBytes = kBlockBytes<BITS>;
  const uint8_t* w;
  const S* scales;
  const S* mins;  // nullptr: none
  int64_t K, N;
  QuantizedX qx;
  float* y;

  const uint8_t* wblock(int64_t n, int64_t b) const {
    return w + n * (K / kBlock) * kBytes + b * kBytes;
  }

  static __m256i load_w(const uint8_t* p) {
    if constexpr (BITS == 4) return unpack_u4(p);
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }

  // R rows read as R interleaved streams, which the hardware prefetcher follows
  // poorly: each tile asks for the weights of the tile kAhead tiles on. (Asking for
  // the scales too was measured 2x slower on the LM head.)
  void prefetch(int64_t n0, int64_t rows) const {
    const char* from = reinterpret_cast<const char*>(wblock(n0, 0));
    for (int64_t i = 0; i < rows * (K / kBlock) * kBytes; i += 64)
      _mm_prefetch(from + i, _MM_HINT_T0);
  }

  // Rows n0..n0+R-1 of W times rows m0..m0+T-1 of x; comb: R * T * (K / G) floats.
  template <int R, int T>
  void tile(int64_t n0, int64_t m0, float* comb) const {
    const int64_t nb = K / kBlock, ng = K / G, wstride = nb * kBytes;
    // Named accumulators (index r * T + t): GCC keeps a loop-carried array in memory.
    // The block sums start from zero and the min terms are summed apart, then added
    // after both horizontal sums, in the panel kernel's order: a row's result is then
    // the same whichever kernel (and so whichever batch) computed it.
    static_assert(R * T <= 4);
    auto start = [&](int i) {  // sum index i = r * T + t: its scales, and its min term
      const int64_t n = n0 + i / T, m = m0 + i % T;
      scale_row(scales + n * ng, qx.scale + m * nb, ng, G, comb + i * ng);
      return mins ? min_term(mins + n * nb, qx.sum + m * nb, nb) : _mm256_setzero_ps();
    };
    const __m256 zero = _mm256_setzero_ps();
    const __m256 m0v = start(0), m1v = R * T > 1 ? start(1) : zero;
    const __m256 m2v = R * T > 2 ? start(2) : zero, m3v = R * T > 3 ? start(3) : zero;
    __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    if (n0 + (kAhead + 1) * R <= N) prefetch(n0 + kAhead * R, R);
    const uint8_t* wp = wblock(n0, 0);
    const int8_t* xp = qx.q + m0 * K;
    for (int64_t b = 0; b < nb; ++b, wp += kBytes, xp += kBlock) {
      __m256i wv[R];
      for (int r = 0; r < R; ++r) wv[r] = load_w(wp + r * wstride);
      __m256 p[4], sc[4];
      for (int t = 0; t < T; ++t) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + t * K));
        for (int r = 0; r < R; ++r) {
          p[r * T + t] = _mm256_cvtepi32_ps(dot32<BITS>(wv[r], xv));
          sc[r * T + t] = block_scale<G>(comb + (r * T + t) * ng, b);
        }
      }
      a0 = _mm256_fmadd_ps(p[0], sc[0], a0);
      if constexpr (R * T > 1) a1 = _mm256_fmadd_ps(p[1], sc[1], a1);
      if constexpr (R * T > 2) a2 = _mm256_fmadd_ps(p[2], sc[2], a2);
      if constexpr (R * T > 3) a3 = _mm256_fmadd_ps(p[3], sc[3], a3);
    }
    __m128 s = hsum4(a0, a1, a2, a3);
    if (mins) s = _mm_add_ps(s, hsum4(m0v, m1v, m2v, m3v));
    alignas(16) float sums[4];
    _mm_store_ps(sums, s);
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) y[(m0 + t) * N + n0 + r] = sums[r * T + t];
  }

  // Weight rows n0..n0+R-1 (R = 4, 2 or 1: the row tile) against every row of x
  // (1 or 2 rows; more go to the panel kernel).
  template <int R>
  void rows(int64_t n0, int64_t M, float* comb) const {
    int64_t m0 = 0;
    if constexpr (R == 4) {
      for (; m0 < M; ++m0) tile<4, 1>(n0, m0, comb);
    } else if constexpr (R == 2) {
      for (; m0 + 2 <= M; m0 += 2) tile<2, 2>(n0, m0, comb);
      if (m0 < M) tile<2, 1>(n0, m0, comb);
    } else {
      for (; m0 + 2 <= M; m0 += 2) tile<1, 2>(n0, m0, comb);
      if (m0 < M) tile<1, 1>(n0, m0, comb);
    }
  }

  template <int R>
  void run(int64_t M) const {
    const int64_t tiles = N / R;
    const int64_t threads = at::get_num_threads();
    // At least ~64K multiply-adds per task: a thread hand-off costs microseconds.
    const int64_t min_tiles = std::max<int64_t>(1, 65536 / (R * K * M));
    const int64_t grain = std::max(min_tiles, tiles / (4 * threads));
    at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> comb(4 * (K / G));
      for (int64_t i = begin; i < end; ++i) rows<R>(i * R, M, comb.data());
    });
    std::vector<float> comb(4 * (K / G));
    for (int64_t n = tiles * R; n < N; ++n) rows<1>(n, M, comb.data());
  }
};

template <int BITS, typename S, int G>
void launch_group(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
                  const torch::Tensor& mins, const QuantizedX& qx, torch::Tensor& y) {
  Kernel<BITS, S, G> k{static_cast<const uint8_t*>(qweight.data_ptr()),
                       scales.data_ptr<S>(),
                       mins.numel() ? mins.data_ptr<S>() : nullptr,
                       x.size(1),
                       qweight.size(0),
                       qx,
                       y.data_ptr<float>()};
  const int64_t M = x.size(0);
  if (M == 1) return k.template run<4>(M);
  if (M == 2) return k.template run<2>(M);
  k.template run<1>(M);
}

template <int BITS, typename S>
void launch(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
            const torch::Tensor& mins, int64_t group, const QuantizedX& qx, torch::Tensor& y) {
  if constexpr (BITS == 8)
    if (group == 16) return launch_group<BITS, S, 16>(x, qweight, scales, mins, qx, y);
  launch_group<BITS, S, kBlock>(x, qweight, scales, mins, qx, y);
}

}  // namespace

// x [M, K] float32 contiguous; see the header for the weight layout. Returns [M, N] float32.
torch::Tensor gguf_linear(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                          torch::Tensor mins, int64_t bits, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: [M, K] f32");
  TORCH_CHECK(qweight.is_contiguous() && scales.is_contiguous() && mins.is_contiguous());
  TORCH_CHECK(qweight.element_size() == 1, "qweight: uint8 or int8");
  TORCH_CHECK(x.size(1) % kBlock == 0, "K must be a multiple of 32");
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8");
  TORCH_CHECK(group == kBlock || (group == 16 && bits == 8 && mins.numel() == 0), "bad group");
  const int64_t K = x.size(1);
  TORCH_CHECK(qweight.size(1) == (bits == 4 ? K / 2 : K), "qweight does not match K");
  const QuantizedX qx = quantize_x(x.data_ptr<float>(), x.size(0), K);
  auto y = torch::empty({x.size(0), qweight.size(0)}, x.options());
  const bool half = scales.scalar_type() == at::kHalf;
  TORCH_CHECK(half || scales.scalar_type() == at::kFloat, "scales must be float16 or float32");
  if (x.size(0) >= kPanelMinRows) {
    panel_linear(qx, x.size(0), K, qweight, scales, mins, bits, group, y.data_ptr<float>());
    return y;
  }
  if (bits == 4)
    half ? launch<4, at::Half>(x, qweight, scales, mins, group, qx, y)
         : launch<4, float>(x, qweight, scales, mins, group, qx, y);
  else
    half ? launch<8, at::Half>(x, qweight, scales, mins, group, qx, y)
         : launch<8, float>(x, qweight, scales, mins, group, qx, y);
  return y;
}

// How many threads at::parallel_for spreads n items over: 1 when the module is built
// without -fopenmp (then at::parallel_for's pragma is ignored), whatever torch's count.
int64_t parallel_threads(int64_t n) {
  std::atomic<int64_t> most{0};
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int64_t id = at::get_thread_num() + 1;
    int64_t seen = most.load();
    while (seen < id && !most.compare_exchange_weak(seen, id)) {
    }
  });
  return most.load();
}

// Compiled into decode_stack.cpp's extension too: there that file defines the module.
#ifndef PAGEDLLM_NO_PYBIND_MODULE
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gguf_linear", &gguf_linear, "y = x W^T with W packed (see gguf_repack.py)");
  m.def("parallel_threads", &parallel_threads, "threads at::parallel_for uses for n items");
}
#endif
