// The C++ entry points of the CPU kernels that decode_stack.cpp calls directly: they
// are defined in decode_ops.cpp and ../quantization/gguf_cpu_kernel.cpp, which are
// compiled into that extension too (with PAGEDLLM_NO_PYBIND_MODULE, so that only
// decode_stack.cpp defines a Python module).
#pragma once
#include <torch/extension.h>
#include <vector>

// gguf_cpu_kernel.cpp: y [M, N] = x [M, K] W^T, W packed (see its header).
torch::Tensor gguf_linear(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                          torch::Tensor mins, int64_t bits, int64_t group);
// How many threads at::parallel_for spreads n items over (tests: built with OpenMP).
int64_t parallel_threads(int64_t n);

// decode_ops.cpp
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual,
                                        torch::Tensor weight, double eps);
void rotary_neox_(torch::Tensor positions, torch::Tensor q, torch::Tensor k,
                  torch::Tensor cos_sin, int64_t head_size);
torch::Tensor silu_and_mul(torch::Tensor x);
void write_kv(torch::Tensor key, torch::Tensor value, torch::Tensor kv_cache, torch::Tensor slots);
torch::Tensor decode_attention(torch::Tensor query, torch::Tensor kv_cache,
                               torch::Tensor block_tables, torch::Tensor seq_lens, double scale);
