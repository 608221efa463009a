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
// mins * sx * sum(qx). Rows of x are processed four at a time so that each weight
// block is unpacked once per four rows; output rows are split across threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kTile = 4;

struct QuantizedX {
  std::vector<int8_t> q;     // [M, K]
  std::vector<float> scale;  // [M, K/32]
  std::vector<float> sum;    // [M, K/32]: scale * sum(q) of the block
};

QuantizedX quantize_x(const float* x, int64_t M, int64_t K) {
  const int64_t nb = K / kBlock;
  QuantizedX out{std::vector<int8_t>(M * K), std::vector<float>(M * nb), std::vector<float>(M * nb)};
  for (int64_t i = 0; i < M * nb; ++i) {
    const float* src = x + i * kBlock;
    float amax = 0.f;
    for (int64_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(src[j]));
    const float d = amax / 127.f;
    const float inv = d > 0.f ? 1.f / d : 0.f;
    int32_t total = 0;
    for (int64_t j = 0; j < kBlock; ++j) {
      const int32_t v = static_cast<int32_t>(std::nearbyint(src[j] * inv));
      out.q[i * kBlock + j] = static_cast<int8_t>(v);
      total += v;
    }
    out.scale[i] = d;
    out.sum[i] = d * static_cast<float>(total);
  }
  return out;
}

inline float to_float(float v) { return v; }
inline float to_float(at::Half v) { return _cvtsh_ss(v.x); }

inline __m256i unpack_u4(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(raw, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
  return _mm256_set_m128i(hi, lo);
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

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int BITS, typename S>
struct Kernel {
  const uint8_t* w;
  const S* scales;
  const S* mins;  // nullptr: none
  int64_t K, N, group;
  const QuantizedX* qx;
  float* y;

  __m256 block_scale(const S* srow, int64_t b) const {
    if (group == kBlock) return _mm256_set1_ps(to_float(srow[b]));
    const __m128 a = _mm_set1_ps(to_float(srow[2 * b]));
    const __m128 c = _mm_set1_ps(to_float(srow[2 * b + 1]));
    return _mm256_set_m128(c, a);
  }

  __m256i load_w(const uint8_t* wrow, int64_t b) const {
    if constexpr (BITS == 4) return unpack_u4(wrow + b * 16);
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow + b * kBlock));
  }

  void row_tile(int64_t n, int64_t m0, int64_t mt) const {
    const int64_t nb = K / kBlock;
    const uint8_t* wrow = w + n * (BITS == 4 ? K / 2 : K);
    const S* srow = scales + n * (K / group);
    const S* mrow = mins ? mins + n * nb : nullptr;
    __m256 acc[kTile];
    float acc_min[kTile];
    for (int64_t t = 0; t < kTile; ++t) acc[t] = _mm256_setzero_ps(), acc_min[t] = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i wv = load_w(wrow, b);
      const __m256 ws = block_scale(srow, b);
      const float wm = mrow ? to_float(mrow[b]) : 0.f;
      for (int64_t t = 0; t < mt; ++t) {
        const int64_t row = (m0 + t) * nb + b;
        const __m256i xv =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx->q.data() + row * kBlock));
        const __m256 p = _mm256_cvtepi32_ps(dot32<BITS>(wv, xv));
        acc[t] = _mm256_fmadd_ps(p, _mm256_mul_ps(ws, _mm256_set1_ps(qx->scale[row])), acc[t]);
        acc_min[t] += wm * qx->sum[row];
      }
    }
    for (int64_t t = 0; t < mt; ++t) y[(m0 + t) * N + n] = hsum(acc[t]) + acc_min[t];
  }

  void run(int64_t M) const {
    const int64_t grain = std::max<int64_t>(16, N / (4 * at::get_num_threads()));
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        for (int64_t m0 = 0; m0 < M; m0 += kTile) row_tile(n, m0, std::min(kTile, M - m0));
    });
  }
};

template <int BITS, typename S>
void launch(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
            const torch::Tensor& mins, int64_t group, const QuantizedX& qx, torch::Tensor& y) {
  Kernel<BITS, S> k{qweight.data_ptr<uint8_t>(),
                    scales.data_ptr<S>(),
                    mins.numel() ? mins.data_ptr<S>() : nullptr,
                    x.size(1),
                    qweight.size(0),
                    group,
                    &qx,
                    y.data_ptr<float>()};
  k.run(x.size(0));
}

}  // namespace

// x [M, K] float32 contiguous; see the header for the weight layout. Returns [M, N] float32.
torch::Tensor gguf_linear(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                          torch::Tensor mins, int64_t bits, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: [M, K] f32");
  TORCH_CHECK(qweight.is_contiguous() && scales.is_contiguous() && mins.is_contiguous());
  TORCH_CHECK(x.size(1) % kBlock == 0, "K must be a multiple of 32");
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8");
  TORCH_CHECK(group == kBlock || (group == 16 && bits == 8 && mins.numel() == 0), "bad group");
  const int64_t K = x.size(1);
  TORCH_CHECK(qweight.size(1) == (bits == 4 ? K / 2 : K), "qweight does not match K");
  auto qw = qweight.view(at::kByte);
  const QuantizedX qx = quantize_x(x.data_ptr<float>(), x.size(0), K);
  auto y = torch::empty({x.size(0), qweight.size(0)}, x.options());
  const bool half = scales.scalar_type() == at::kHalf;
  TORCH_CHECK(half || scales.scalar_type() == at::kFloat, "scales must be float16 or float32");
  if (bits == 4)
    half ? launch<4, at::Half>(x, qw, scales, mins, group, qx, y)
         : launch<4, float>(x, qw, scales, mins, group, qx, y);
  else
    half ? launch<8, at::Half>(x, qw, scales, mins, group, qx, y)
         : launch<8, float>(x, qw, scales, mins, group, qx, y);
  return y;
}

namespace {

template <int BITS, typename S>
void dequantize_row(const uint8_t* w, const S* s, const S* mn, int64_t K, int64_t group,
                    float* out) {
  for (int64_t b = 0; b < K / kBlock; ++b) {
    const float m = mn ? to_float(mn[b]) : 0.f;
    float* o = out + b * kBlock;
    if constexpr (BITS == 4) {
      const float d = to_float(s[b]);
      const uint8_t* q = w + b * 16;
      for (int j = 0; j < 16; ++j) o[j] = d * static_cast<float>(q[j] & 0x0F) + m;
      for (int j = 0; j < 16; ++j) o[j + 16] = d * static_cast<float>(q[j] >> 4) + m;
    } else {
      const int8_t* q = reinterpret_cast<const int8_t*>(w) + b * kBlock;
      for (int64_t h = 0; h < kBlock / group; ++h) {
        const float d = to_float(s[b * (kBlock / group) + h]);
        for (int64_t j = h * group; j < (h + 1) * group; ++j)
          o[j] = d * static_cast<float>(q[j]) + m;
      }
    }
  }
}

template <int BITS, typename S>
void dequantize_all(const torch::Tensor& qw, const torch::Tensor& scales,
                    const torch::Tensor& mins, int64_t K, int64_t group, torch::Tensor& out) {
  const uint8_t* w = qw.data_ptr<uint8_t>();
  const S* s = scales.data_ptr<S>();
  const S* mn = mins.numel() ? mins.data_ptr<S>() : nullptr;
  float* o = out.data_ptr<float>();
  const int64_t wrow = BITS == 4 ? K / 2 : K;
  at::parallel_for(0, out.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      dequantize_row<BITS, S>(w + n * wrow, s + n * (K / group),
                              mn ? mn + n * (K / kBlock) : nullptr, K, group, o + n * K);
  });
}

}  // namespace

// The packed weight as float32 [N, K] (many rows of x: one float GEMM beats the kernel).
torch::Tensor gguf_dequantize(torch::Tensor qweight, torch::Tensor scales, torch::Tensor mins,
                              int64_t bits, int64_t group) {
  const int64_t K = bits == 4 ? qweight.size(1) * 2 : qweight.size(1);
  auto out = torch::empty({qweight.size(0), K}, scales.options().dtype(at::kFloat));
  auto qw = qweight.view(at::kByte);
  const bool half = scales.scalar_type() == at::kHalf;
  if (bits == 4)
    half ? dequantize_all<4, at::Half>(qw, scales, mins, K, group, out)
         : dequantize_all<4, float>(qw, scales, mins, K, group, out);
  else
    half ? dequantize_all<8, at::Half>(qw, scales, mins, K, group, out)
         : dequantize_all<8, float>(qw, scales, mins, K, group, out);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gguf_linear", &gguf_linear, "y = x W^T with W packed (see gguf_repack.py)");
  m.def("gguf_dequantize", &gguf_dequantize, "the packed weight as float32 [N, K]");
}
