// A whole decode step of a Llama-family decoder stack on the CPU in one call.
//
// At one chat at a time a decode step of a small model (SmolLM2-135M: 30 layers, hidden
// 576) spent more time in Python (nn.Module calls, the linear-layer wrappers, ~50 us per
// layer per call chain) than in the packed matrix-vector products. DecodeStack holds
// each layer's weights once (registered from Python at the first decode step) and runs
// the same C++ kernels the Python path calls, in the same order with the same arguments,
// so its results are those of the Python path bit for bit:
//
//   x, residual -> add_rms_norm (rms_norm on layer 0, residual = x)
//               -> qkv linear -> rotary_neox_ on the q, k views -> write_kv
//               -> decode_attention -> o linear -> add_rms_norm
//               -> gate_up linear -> silu_and_mul -> down linear
//   after the last layer: add_rms_norm with the final norm's weight.
//
// A linear is a list of parts whose outputs are concatenated (gguf.py's layout): packed
// GGUF (gguf_linear), float32 through oneDNN with a packed weight (cpu_linear.py's
// `mkldnn::_linear_pointwise`) or a plain float32 weight (at::linear).
// The GIL is released for the whole step.
#include <torch/extension.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <string>
#include <tuple>
#include <vector>

#include "cpu_kernels.h"

namespace {

// bits: 4 or 8 packed GGUF; kFloat: weight [N, K] float32; kOneDnn: a oneDNN packed weight.
constexpr int64_t kFloat = 0, kOneDnn = -1;

struct Part {
  torch::Tensor weight, scales, mins;
  int64_t bits, group;
};
using PartTuple = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, int64_t, int64_t>;
using Linear = std::vector<Part>;

torch::Tensor onednn_linear(const torch::Tensor& x, const torch::Tensor& packed) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack{x, packed, c10::IValue(), std::string("none"),
                          c10::List<std::optional<at::Scalar>>(), std::string("")};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

torch::Tensor apply_part(const Part& p, const torch::Tensor& x) {
  if (p.bits == kOneDnn) return onednn_linear(x, p.weight);
  if (p.bits == kFloat) return at::linear(x, p.weight);
  return gguf_linear(x, p.weight, p.scales, p.mins, p.bits, p.group);
}

torch::Tensor run_linear(const Linear& parts, const torch::Tensor& x) {
  if (parts.size() == 1) return apply_part(parts[0], x);
  std::vector<torch::Tensor> outs;
  for (const Part& p : parts) outs.push_back(apply_part(p, x));
  return at::cat(outs, 1);
}

Linear to_linear(const std::vector<PartTuple>& tuples) {
  TORCH_CHECK(!tuples.empty(), "a linear layer without weights");
  Linear parts;
  for (const auto& [w, s, m, bits, group] : tuples) {
    TORCH_CHECK(bits == 4 || bits == 8 || bits == kFloat || bits == kOneDnn, "bad part kind");
    parts.push_back({w, s, m, bits, group});
  }
  return parts;
}

struct Layer {
  torch::Tensor input_norm, post_norm;
  Linear qkv, o, gate_up, down;
};

}  // namespace

class DecodeStack {
 public:
  DecodeStack(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps,
              double scale, torch::Tensor cos_sin, torch::Tensor final_norm)
      : H_(num_heads), KH_(num_kv_heads), D_(head_dim), eps_(eps), scale_(scale),
        cos_sin_(cos_sin), final_norm_(final_norm) {}

  void add_layer(torch::Tensor input_norm, torch::Tensor post_norm,
                 const std::vector<PartTuple>& qkv, const std::vector<PartTuple>& o,
                 const std::vector<PartTuple>& gate_up, const std::vector<PartTuple>& down) {
    layers_.push_back({input_norm, post_norm, to_linear(qkv), to_linear(o), to_linear(gate_up),
                       to_linear(down)});
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // hidden [T, hidden] float32 (the embeddings), one new token per sequence; kv_caches
  // one per layer; the rest as AttentionMetadata has them. Returns the final-normed
  // hidden states [T, hidden].
  torch::Tensor forward(torch::Tensor hidden, torch::Tensor positions,
                        const std::vector<torch::Tensor>& kv_caches, torch::Tensor block_tables,
                        torch::Tensor seq_lens, torch::Tensor slot_mapping) const {
    TORCH_CHECK(kv_caches.size() == layers_.size(), "one KV cache per layer");
    const int64_t T = hidden.size(0);
    torch::Tensor x = hidden, residual;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& layer = layers_[i];
      torch::Tensor h;
      if (i == 0) {
        h = rms_norm(x, layer.input_norm, eps_);
        residual = x;
      } else {
        auto r = add_rms_norm(x, residual, layer.input_norm, eps_);
        h = r[0], residual = r[1];
      }
      h = attention(layer, h, T, positions, kv_caches[i], block_tables, seq_lens, slot_mapping);
      auto r = add_rms_norm(h, residual, layer.post_norm, eps_);
      residual = r[1];
      x = run_linear(layer.down, silu_and_mul(run_linear(layer.gate_up, r[0])));
    }
    return add_rms_norm(x, residual, final_norm_, eps_)[0];
  }

 private:
  torch::Tensor attention(const Layer& layer, const torch::Tensor& h, int64_t T,
                          const torch::Tensor& positions, const torch::Tensor& kv_cache,
                          const torch::Tensor& block_tables, const torch::Tensor& seq_lens,
                          const torch::Tensor& slot_mapping) const {
    const int64_t qs = H_ * D_, kvs = KH_ * D_;
    torch::Tensor qkv = run_linear(layer.qkv, h);
    TORCH_CHECK(qkv.size(1) == qs + 2 * kvs, "qkv width");
    torch::Tensor q = qkv.narrow(1, 0, qs), k = qkv.narrow(1, qs, kvs);
    torch::Tensor v = qkv.narrow(1, qs + kvs, kvs);
    rotary_neox_(positions, q, k, cos_sin_, D_);
    write_kv(k.view({T, KH_, D_}), v.view({T, KH_, D_}), kv_cache, slot_mapping);
    torch::Tensor out =
        decode_attention(q.contiguous().view({T, H_, D_}), kv_cache, block_tables, seq_lens, scale_);
    return run_linear(layer.o, out.view({T, qs}));
  }

  int64_t H_, KH_, D_;
  double eps_, scale_;
  torch::Tensor cos_sin_, final_norm_;
  std::vector<Layer> layers_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<DecodeStack>(m, "DecodeStack")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, double, torch::Tensor,
                          torch::Tensor>())
      .def("add_layer", &DecodeStack::add_layer)
      .def("num_layers", &DecodeStack::num_layers)
      .def("forward", &DecodeStack::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("parallel_threads", &parallel_threads, "threads at::parallel_for uses for n items");
  m.attr("FLOAT") = kFloat;
  m.attr("ONEDNN") = kOneDnn;
}
