// y = x W^T for kPanelMinRows or more rows of x (batched decode), on x86 AVX2.
//
// The numerics are gguf_cpu_kernel.cpp's (x quantized per 32 columns to int8, one
// integer dot product per block scaled by scale * sx in float, the min term from x's
// block sums); only the loop order differs. A panel is kR = 4 weight rows: their
// blocks are unpacked once into an int8 buffer that stays in L1 (4 bits: the values
// 0..15; 8 bits: |w| and w, for the sign trick) and their scales and mins converted to
// float. Then every tile of T rows of x runs over the panel with kR * T accumulators.
// Before a tile, scale * sx for all its (weight row, x row, group)s and its min terms
// are computed 8 at a time over zero-padded arrays, so the block loop only loads,
// multiplies and adds. Panels are split across threads.
#include <ATen/Parallel.h>

#include <algorithm>

#include "gguf_cpu_common.h"

namespace pagedllm_gguf {
namespace {

constexpr int kR = 4;
constexpr int kT = 2;  // rows of x per tile: 8 sums, 4 weight blocks, x, temporaries
inline int64_t pad8(int64_t n) { return (n + 7) / 8 * 8; }

// x's block scales per weight group and its block sums, zero-padded to 8 per row.
struct PaddedX {
  int64_t ngp, nbp;
  std::vector<float> scale, sum;  // [M, ngp], [M, nbp]
};

PaddedX pad_x(const QuantizedX& qx, int64_t M, int64_t nb, int64_t group) {
  const int64_t ng = nb * (kBlock / group);
  PaddedX p{pad8(ng), pad8(nb), {}, {}};
  p.scale.assign(M * p.ngp, 0.f);
  p.sum.assign(M * p.nbp, 0.f);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t g = 0; g < ng; ++g) p.scale[m * p.ngp + g] = qx.scale[m * nb + g * group / kBlock];
    std::copy(qx.sum + m * nb, qx.sum + (m + 1) * nb, p.sum.begin() + m * p.nbp);
  }
  return p;
}

// One thread's unpacked panel and its scale products with every row of x.
struct Work {
  std::vector<int8_t> q, sign;  // [nb][kR][32]: values (4 bits) or |w| (8 bits); w (8 bits)
  std::vector<float> scale, min;  // [kR][ngp], [kR][nbp]
  std::vector<float> comb, minterm;  // [M][kR][ngp], [M][kR]
  Work(int64_t nb, int64_t M, const PaddedX& px)
      : q(nb * kR * kBlock), sign(nb * kR * kBlock), scale(kR * px.ngp, 0.f),
        min(kR * px.nbp, 0.f), comb(M * kR * px.ngp), minterm(M * kR) {}
};

template <int BITS, typename S, int G>
struct Panel {
  static constexpr int64_t kBytes = kBlockBytes<BITS>;
  const uint8_t* w;
  const S* scales;
  const S* mins;  // nullptr: none
  int64_t K, N, M;
  const int8_t* xq;
  const PaddedX& px;
  float* y;

  // Weight rows n0..n0+rows-1 into wk; the rows past N get zero scales and mins.
  void unpack(int64_t n0, int64_t rows, Work& wk) const {
    const int64_t nb = K / kBlock, ng = K / G;
    for (int r = 0; r < kR; ++r) {
      float* s = wk.scale.data() + r * px.ngp;
      float* mn = wk.min.data() + r * px.nbp;
      if (r >= rows) {
        std::fill(s, s + ng, 0.f), std::fill(mn, mn + nb, 0.f);
        continue;
      }
      const int64_t n = n0 + r;
      const uint8_t* src = w + n * nb * kBytes;
      for (int64_t b = 0; b < nb; ++b) {
        auto* dst = reinterpret_cast<__m256i*>(wk.q.data() + (b * kR + r) * kBlock);
        if constexpr (BITS == 4) {
          _mm256_storeu_si256(dst, unpack_u4(src + b * kBytes));
        } else {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + b * kBytes));
          _mm256_storeu_si256(dst, _mm256_sign_epi8(v, v));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(wk.sign.data() + (b * kR + r) * kBlock), v);
        }
      }
      widen(scales + n * ng, ng, s);
      if (mins) widen(mins + n * nb, nb, mn);
    }
  }

  // count scales or mins as float (F16C 8 at a time for float16).
  static void widen(const S* from, int64_t count, float* to) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(to + i, load8(from + i));
    for (; i < count; ++i) to[i] = to_float(from[i]);
  }

  // For every row m of x: comb[m][r] = scale[r] * sx[m] per group and the min terms
  // mins[r] . xsum[m]. Once per panel, not per tile: the tiles then only load them.
  void products(Work& wk) const {
    const int64_t ngp = px.ngp, nbp = px.nbp;
    for (int64_t m = 0; m < M; ++m) {
      const float* xs = px.scale.data() + m * ngp;
      for (int r = 0; r < kR; ++r) {
        const float* ws = wk.scale.data() + r * ngp;
        float* c = wk.comb.data() + (m * kR + r) * ngp;
        for (int64_t g = 0; g < ngp; g += 8)
          _mm256_storeu_ps(c + g, _mm256_mul_ps(_mm256_loadu_ps(ws + g), _mm256_loadu_ps(xs + g)));
      }
      if (!mins) continue;
      const float* xm = px.sum.data() + m * nbp;
      const float* wm = wk.min.data();
      __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t b = 0; b < nbp; b += 8) {
        const __m256 v = _mm256_loadu_ps(xm + b);
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(wm + b), v, s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(wm + nbp + b), v, s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(wm + 2 * nbp + b), v, s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(wm + 3 * nbp + b), v, s3);
      }
      _mm_storeu_ps(wk.minterm.data() + m * kR, hsum4(s0, s1, s2, s3));
    }
  }

  // acc + (w . x) * scale for one block; 8 bits: w holds |w|, sign the signed w.
  static __m256 step(__m256i w, __m256i x, const int8_t* sign, __m256 scale, __m256 acc) {
    if constexpr (BITS == 8)
      x = _mm256_sign_epi8(x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sign)));
    const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), scale, acc);
  }

  static __m256i load(const int8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }

  // The panel at n0 (rows of it valid) times rows m0..m0+T-1 of x (T = 1 or 2). The
  // sums are named variables: GCC keeps a loop-carried array in memory.
  template <int T>
  void tile(int64_t n0, int64_t rows, int64_t m0, const Work& wk) const {
    static_assert(T == 1 || T == 2);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const int8_t* wp = wk.q.data();
    const int8_t* sp = wk.sign.data();
    const int8_t* xp = xq + m0 * K;
    const int64_t nb = K / kBlock, ngp = px.ngp;
    const float* c = wk.comb.data() + m0 * kR * ngp;
    for (int64_t b = 0; b < nb; ++b, wp += kR * kBlock, sp += kR * kBlock, xp += kBlock) {
      const __m256i w0 = load(wp), w1 = load(wp + kBlock);
      const __m256i w2 = load(wp + 2 * kBlock), w3 = load(wp + 3 * kBlock);
      const __m256i x0 = load(xp);
      a0 = step(w0, x0, sp, block_scale<G>(c, b), a0);
      a1 = step(w1, x0, sp + kBlock, block_scale<G>(c + ngp, b), a1);
      a2 = step(w2, x0, sp + 2 * kBlock, block_scale<G>(c + 2 * ngp, b), a2);
      a3 = step(w3, x0, sp + 3 * kBlock, block_scale<G>(c + 3 * ngp, b), a3);
      if constexpr (T == 2) {
        const __m256i x1 = load(xp + K);
        a4 = step(w0, x1, sp, block_scale<G>(c + 4 * ngp, b), a4);
        a5 = step(w1, x1, sp + kBlock, block_scale<G>(c + 5 * ngp, b), a5);
        a6 = step(w2, x1, sp + 2 * kBlock, block_scale<G>(c + 6 * ngp, b), a6);
        a7 = step(w3, x1, sp + 3 * kBlock, block_scale<G>(c + 7 * ngp, b), a7);
      }
    }
    store(hsum4(a0, a1, a2, a3), wk, m0, n0, rows);
    if constexpr (T == 2) store(hsum4(a4, a5, a6, a7), wk, m0 + 1, n0, rows);
  }

  // y[m, n0..n0+rows-1] = the sums plus the min terms.
  void store(__m128 s, const Work& wk, int64_t m, int64_t n0, int64_t rows) const {
    if (mins) s = _mm_add_ps(s, _mm_loadu_ps(wk.minterm.data() + m * kR));
    float* out = y + m * N + n0;
    if (rows == kR) return _mm_storeu_ps(out, s);
    alignas(16) float v[4];
    _mm_store_ps(v, s);
    std::copy(v, v + rows, out);
  }

  void run() const {
    const int64_t panels = (N + kR - 1) / kR, nb = K / kBlock;
    // At least ~64K multiply-adds per task: a thread hand-off costs microseconds.
    const int64_t grain = std::max<int64_t>(1, 65536 / (kR * K * M));
    at::parallel_for(0, panels, grain, [&](int64_t begin, int64_t end) {
      Work wk(nb, M, px);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n0 = i * kR, rows = std::min<int64_t>(kR, N - n0);
        unpack(n0, rows, wk);
        products(wk);
        int64_t m0 = 0;
        for (; m0 + kT <= M; m0 += kT) tile<kT>(n0, rows, m0, wk);
        for (; m0 < M; ++m0) tile<1>(n0, rows, m0, wk);
      }
    });
  }
};

template <int BITS, typename S, int G>
void launch(const QuantizedX& qx, int64_t M, int64_t K, const torch::Tensor& qweight,
            const torch::Tensor& scales, const torch::Tensor& mins, float* y) {
  const PaddedX px = pad_x(qx, M, K / kBlock, G);
  Panel<BITS, S, G>{static_cast<const uint8_t*>(qweight.data_ptr()),
                    scales.data_ptr<S>(),
                    mins.numel() ? mins.data_ptr<S>() : nullptr,
                    K,
                    qweight.size(0),
                    M,
                    qx.q,
                    px,
                    y}
      .run();
}

template <int BITS, typename S>
void launch_bits(const QuantizedX& qx, int64_t M, int64_t K, const torch::Tensor& qweight,
                 const torch::Tensor& scales, const torch::Tensor& mins, int64_t group, float* y) {
  if constexpr (BITS == 8)
    if (group == 16) return launch<8, S, 16>(qx, M, K, qweight, scales, mins, y);
  launch<BITS, S, kBlock>(qx, M, K, qweight, scales, mins, y);
}

}  // namespace

void panel_linear(const QuantizedX& qx, int64_t M, int64_t K, const torch::Tensor& qweight,
                  const torch::Tensor& scales, const torch::Tensor& mins, int64_t bits,
                  int64_t group, float* y) {
  const bool half = scales.scalar_type() == at::kHalf;
  if (bits == 4)
    half ? launch_bits<4, at::Half>(qx, M, K, qweight, scales, mins, group, y)
         : launch_bits<4, float>(qx, M, K, qweight, scales, mins, group, y);
  else
    half ? launch_bits<8, at::Half>(qx, M, K, qweight, scales, mins, group, y)
         : launch_bits<8, float>(qx, M, K, qweight, scales, mins, group, y);
}

}  // namespace pagedllm_gguf
