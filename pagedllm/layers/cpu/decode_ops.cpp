// Fused float32 CPU ops for decoding (few tokens per step), x86 AVX2 + FMA.
//
// At one chat at a time a decode step of a small model (SmolLM2-135M: hidden 576, 30
// layers) is ~25 torch ops per layer around four matrix-vector products; each op costs
// microseconds of dispatch and allocation, more than its arithmetic. These ops do the same
// arithmetic in one call each, single-threaded where the work is tiny:
//   add_rms_norm:    (x + residual) -> (rms_norm(x + residual) * w, x + residual)
//   rms_norm:        x -> rms_norm(x) * w
//   rotary_neox_:    q, k rotated in place (neox layout: halves of each head)
//   silu_and_mul:    [T, 2d] -> silu(x[:, :d]) * x[:, d:]
//   write_kv:        keys/values into their paged cache slots
//   decode_attention: one query token per sequence against all of its cached keys;
//   prefill_attention: causal, any number of query tokens per sequence.
// Sums run in 8 float lanes (torch also sums in vector lanes): results agree with the
// torch ops to float32 rounding, not bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <numeric>
#include <utility>
#include <vector>

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out = x * rsqrt(mean(x^2) + eps) * w over one row of n.
void norm_row(const float* x, const float* w, float eps, int64_t n, float* out) {
  const float inv = 1.f / std::sqrt(dot(x, x, n) / static_cast<float>(n) + eps);
  const __m256 vi = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(w + i),
                                            _mm256_mul_ps(_mm256_loadu_ps(x + i), vi)));
  for (; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

void check_rows(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1 && x.is_cpu(),
              name, ": [T, n] float32 CPU with unit column stride");
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check_rows(x, "x");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1));
  const int64_t n = x.size(1);
  auto out = torch::empty({x.size(0), n}, x.options());
  for (int64_t t = 0; t < x.size(0); ++t)
    norm_row(x.data_ptr<float>() + t * x.stride(0), weight.data_ptr<float>(), eps, n,
             out.data_ptr<float>() + t * n);
  return out;
}

std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual,
                                        torch::Tensor weight, double eps) {
  check_rows(x, "x");
  check_rows(residual, "residual");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1));
  TORCH_CHECK(residual.sizes() == x.sizes());
  const int64_t T = x.size(0), n = x.size(1);
  auto sum = torch::empty({T, n}, x.options());
  auto out = torch::empty({T, n}, x.options());
  for (int64_t t = 0; t < T; ++t) {
    const float* a = x.data_ptr<float>() + t * x.stride(0);
    const float* b = residual.data_ptr<float>() + t * residual.stride(0);
    float* s = sum.data_ptr<float>() + t * n;
    for (int64_t i = 0; i < n; ++i) s[i] = a[i] + b[i];
    norm_row(s, weight.data_ptr<float>(), eps, n, out.data_ptr<float>() + t * n);
  }
  return {out, sum};
}

// x [T, heads * D] (row stride any), rotated in place: for i < D/2,
// x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin (x1 = x[i], x2 = x[i + D/2]);
// cos_sin [P, D]: cos in the first D/2 columns, sin in the last.
void rotary_neox_(torch::Tensor positions, torch::Tensor q, torch::Tensor k,
                  torch::Tensor cos_sin, int64_t head_size) {
  check_rows(q, "q");
  check_rows(k, "k");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous());
  TORCH_CHECK(cos_sin.scalar_type() == at::kFloat && cos_sin.is_contiguous());
  TORCH_CHECK(cos_sin.size(1) == head_size && head_size % 2 == 0);
  const int64_t half = head_size / 2;
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (torch::Tensor* xt : {&q, &k}) {
    const int64_t heads = xt->size(1) / head_size;
    for (int64_t t = 0; t < xt->size(0); ++t) {
      TORCH_CHECK(pos[t] >= 0 && pos[t] < cos_sin.size(0), "position out of range");
      const float* c = cos_sin.data_ptr<float>() + pos[t] * head_size;
      const float* s = c + half;
      for (int64_t h = 0; h < heads; ++h) {
        float* x1 = xt->data_ptr<float>() + t * xt->stride(0) + h * head_size;
        float* x2 = x1 + half;
        for (int64_t i = 0; i < half; ++i) {
          const float a = x1[i], b = x2[i];
          x1[i] = a * c[i] - b * s[i];
          x2[i] = b * c[i] + a * s[i];
        }
      }
    }
  }
}

torch::Tensor silu_and_mul(torch::Tensor x) {
  check_rows(x, "x");
  const int64_t T = x.size(0), d = x.size(1) / 2;
  auto out = torch::empty({T, d}, x.options());
  for (int64_t t = 0; t < T; ++t) {
    const float* g = x.data_ptr<float>() + t * x.stride(0);
    const float* u = g + d;
    float* o = out.data_ptr<float>() + t * d;
    for (int64_t i = 0; i < d; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
  return out;
}

namespace {

// One kv head of one sequence: G query heads against L cached keys.
void attend_kv_head(const float* q, int64_t G, int64_t D, const float* key_cache,
                    const float* value_cache, const int32_t* blocks, int64_t L,
                    int64_t block_size, int64_t slot_stride, float scale, float* out,
                    float* scores) {
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * D;
    float* sc = scores + g * L;
    float mx = -INFINITY;
    for (int64_t p = 0; p < L; ++p) {
      const int64_t slot = static_cast<int64_t>(blocks[p / block_size]) * block_size + p % block_size;
      sc[p] = dot(qg, key_cache + slot * slot_stride, D) * scale;
      mx = std::max(mx, sc[p]);
    }
    float total = 0.f;
    for (int64_t p = 0; p < L; ++p) total += (sc[p] = std::exp(sc[p] - mx));
    const float inv = 1.f / total;
    float* o = out + g * D;
    for (int64_t i = 0; i < D; ++i) o[i] = 0.f;
    for (int64_t p = 0; p < L; ++p) {
      const int64_t slot = static_cast<int64_t>(blocks[p / block_size]) * block_size + p % block_size;
      const float* v = value_cache + slot * slot_stride;
      const float w = sc[p] * inv;
      for (int64_t i = 0; i < D; ++i) o[i] += w * v[i];
    }
  }
}

}  // namespace

// key/value [T, KH, D] (unit stride in D) into kv_cache [2, blocks, block_size, KH, D]
// float32 at flat slots [>= T] int64 (-1: not stored).
void write_kv(torch::Tensor key, torch::Tensor value, torch::Tensor kv_cache, torch::Tensor slots) {
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.is_contiguous() && kv_cache.scalar_type() == at::kFloat);
  TORCH_CHECK(key.scalar_type() == at::kFloat && value.scalar_type() == at::kFloat);
  TORCH_CHECK(key.stride(2) == 1 && value.stride(2) == 1, "key/value: unit stride in D");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous());
  const int64_t T = std::min(key.size(0), slots.size(0)), KH = kv_cache.size(3), D = kv_cache.size(4);
  TORCH_CHECK(key.size(1) == KH && key.size(2) == D && value.sizes() == key.sizes());
  const int64_t num_slots = kv_cache.size(1) * kv_cache.size(2), slot_stride = KH * D;
  float* kc = kv_cache.data_ptr<float>();
  float* vc = kc + num_slots * slot_stride;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slots.data_ptr<int64_t>()[t];
    if (slot < 0) continue;
    TORCH_CHECK(slot < num_slots, "slot out of range");
    for (int64_t h = 0; h < KH; ++h) {
      const float* ks = key.data_ptr<float>() + t * key.stride(0) + h * key.stride(1);
      const float* vs = value.data_ptr<float>() + t * value.stride(0) + h * value.stride(1);
      std::copy(ks, ks + D, kc + slot * slot_stride + h * D);
      std::copy(vs, vs + D, vc + slot * slot_stride + h * D);
    }
  }
}

namespace {

// The attention of every query token t of query [T, H, D] (contiguous) over the paged
// cache: token(t) gives {its sequence b, its key count L}; b < 0 or L == 0 gives zeros.
// One task per (token, kv head), `grain` tasks at least per thread hand-off. Query head
// h reads kv head h / (H / KH). Returns [T, H, D].
template <typename TokenFn>
torch::Tensor attend_tokens(const torch::Tensor& query, const torch::Tensor& kv_cache,
                            const torch::Tensor& block_tables, double scale, int64_t grain,
                            TokenFn token) {
  const int64_t T = query.size(0), H = query.size(1), D = query.size(2);
  const int64_t block_size = kv_cache.size(2), KH = kv_cache.size(3), G = H / KH;
  const int64_t slot_stride = KH * D, half = kv_cache.size(1) * block_size * slot_stride;
  const int64_t width = block_tables.size(1);
  float* kc = kv_cache.data_ptr<float>();
  auto out = torch::zeros({T, H, D}, query.options());
  at::parallel_for(0, T * KH, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i / KH, h = i % KH;
      const auto [b, L] = token(t);
      if (b < 0 || L == 0) continue;
      scores.resize(G * L);
      attend_kv_head(query.data_ptr<float>() + (t * H + h * G) * D, G, D, kc + h * D,
                     kc + half + h * D, block_tables.data_ptr<int32_t>() + b * width, L,
                     block_size, slot_stride, static_cast<float>(scale),
                     out.data_ptr<float>() + (t * H + h * G) * D, scores.data());
    }
  });
  return out;
}

void check_paged_inputs(const torch::Tensor& query, const torch::Tensor& kv_cache,
                        const torch::Tensor& block_tables, const torch::Tensor& seq_lens) {
  TORCH_CHECK(query.dim() == 3 && query.is_contiguous() && query.scalar_type() == at::kFloat);
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.is_contiguous() && kv_cache.scalar_type() == at::kFloat);
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.is_contiguous());
  TORCH_CHECK(seq_lens.scalar_type() == at::kInt && seq_lens.is_contiguous());
  TORCH_CHECK(kv_cache.size(4) == query.size(2) && query.size(1) % kv_cache.size(3) == 0);
}

}  // namespace

// query [B, H, D] contiguous (one token per sequence), kv_cache as in write_kv,
// block_tables [B, max_blocks] int32, seq_lens [B] int32 (cached keys, the new one
// included). Query head h reads kv head h / (H / KH). Returns [B, H, D]; 0 keys give 0.
torch::Tensor decode_attention(torch::Tensor query, torch::Tensor kv_cache,
                               torch::Tensor block_tables, torch::Tensor seq_lens, double scale) {
  check_paged_inputs(query, kv_cache, block_tables, seq_lens);
  const int64_t B = query.size(0), block_size = kv_cache.size(2), KH = kv_cache.size(3);
  const int64_t width = block_tables.size(1);
  TORCH_CHECK(seq_lens.size(0) >= B && block_tables.size(0) >= B);
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(lens[b] >= 0 && (lens[b] + block_size - 1) / block_size <= width, "seq_len too long");
  // One sequence runs on the calling thread.
  const int64_t grain = B == 1 ? KH : 1;
  return attend_tokens(query, kv_cache, block_tables, scale, grain,
                       [&](int64_t b) { return std::pair<int64_t, int64_t>{b, lens[b]}; });
}

// Causal attention of any number of query tokens per sequence (prefill, chunked
// prefill, mixed steps) over the paged cache, whose keys/values of this step are
// written already: query [T, H, D] contiguous, query_start_loc [B + 1] int32; query
// token j of sequence b sits at position seq_lens[b] - q_len_b + j and sees the keys at
// positions up to its own. One task per (token, kv head), split across threads from
// ~64K multiply-adds per task group. Returns [T, H, D].
torch::Tensor prefill_attention(torch::Tensor query, torch::Tensor kv_cache,
                                torch::Tensor block_tables, torch::Tensor seq_lens,
                                torch::Tensor query_start_loc, double scale) {
  check_paged_inputs(query, kv_cache, block_tables, seq_lens);
  TORCH_CHECK(query_start_loc.scalar_type() == at::kInt && query_start_loc.is_contiguous());
  const int64_t T = query.size(0), B = query_start_loc.size(0) - 1;
  const int64_t block_size = kv_cache.size(2), width = block_tables.size(1);
  TORCH_CHECK(seq_lens.size(0) >= B && block_tables.size(0) >= B);
  const int32_t* qsl = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  std::vector<int64_t> seq_of(T, -1), keys(T, 0);  // per token: its sequence, its key count
  for (int64_t b = 0; b < B; ++b) {
    const int64_t start = qsl[b], q_len = qsl[b + 1] - qsl[b];
    TORCH_CHECK(start >= 0 && q_len >= 0 && start + q_len <= T, "query_start_loc out of range");
    TORCH_CHECK(lens[b] >= q_len && (lens[b] + block_size - 1) / block_size <= width, "bad seq_len");
    for (int64_t j = 0; j < q_len; ++j) seq_of[start + j] = b, keys[start + j] = lens[b] - q_len + j + 1;
  }
  const int64_t G = query.size(1) / kv_cache.size(3), D = query.size(2);
  const int64_t mean_keys = T ? (std::accumulate(keys.begin(), keys.end(), int64_t{0}) / T) : 0;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, 2 * mean_keys * G * D));
  return attend_tokens(query, kv_cache, block_tables, scale, grain, [&](int64_t t) {
    return std::pair<int64_t, int64_t>{seq_of[t], keys[t]};
  });
}

// Compiled into decode_stack.cpp's extension too: there that file defines the module.
#ifndef PAGEDLLM_NO_PYBIND_MODULE
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "rms_norm(x) * w, float32 rows");
  m.def("add_rms_norm", &add_rms_norm, "(rms_norm(x + r) * w, x + r)");
  m.def("rotary_neox_", &rotary_neox_, "neox rotary of q and k in place");
  m.def("silu_and_mul", &silu_and_mul, "silu(x[:, :d]) * x[:, d:]");
  m.def("write_kv", &write_kv, "keys/values into the paged cache");
  m.def("decode_attention", &decode_attention, "one query token per sequence, paged cache");
  m.def("prefill_attention", &prefill_attention, "causal attention of many tokens, paged cache");
}
#endif
