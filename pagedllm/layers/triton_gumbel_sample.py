"""Fused sampling for plain temperature rows: one pass over the logits.

token[r] = argmax_v (logits[r, v] / T[r] + G[r, v]),  G ~ Gumbel(0, 1) i.i.d.

The Gumbel-max trick draws v with probability softmax(logits[r] / T[r])[v] exactly,
with no softmax, no cumulative sum and no second pass. G comes from Triton's
counter-based Philox generator keyed by (seed, r * V + v), so a launch is a pure
function of (logits, T, seed). Used only for unseeded rows without top-k / top-p /
min-p; everything else goes through the torch sampler.

grid = (N,): one program per row, looping over the vocabulary in BLOCK_V chunks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers import triton_utils as tu


@triton.jit
def _gumbel_sample_kernel(
    logits_ptr,  # [N, V] float32 / bf16 / fp16, row stride stride_row, last dim contiguous
    temperature_ptr,  # [N] float32, > 0
    out_ptr,  # [N] int64
    seed,  # int
    vocab_size,  # V
    stride_row,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # row * stride_row can pass 2**31
    inv_t = 1.0 / tl.load(temperature_ptr + row)
    best_val = tl.full([BLOCK_V], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_V], tl.int32)
    for start in range(0, vocab_size, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        mask = offs < vocab_size
        x = tl.load(logits_ptr + row * stride_row + offs, mask=mask, other=float("-inf"))
        u = tl.rand(seed, (row * vocab_size + offs).to(tl.int32))  # distinct while N * V < 2**32
        u = tl.minimum(tl.maximum(u, 1e-12), 1.0 - 1e-7)
        val = x.to(tl.float32) * inv_t - tl.log(-tl.log(u))
        take = val > best_val
        best_val = tl.where(take, val, best_val)
        best_idx = tl.where(take, offs, best_idx)
    top = tl.max(best_val, axis=0)
    # Among lanes holding the maximum, the smallest vocabulary index wins.
    cand = tl.where(best_val == top, best_idx, vocab_size)
    tl.store(out_ptr + row, tl.min(cand, axis=0).to(tl.int64))


def gumbel_sample(logits: torch.Tensor, temperature: torch.Tensor, seed: int) -> torch.Tensor:
    """logits [N, V], temperature [N] float32 (> 0) -> [N] int64 sampled token ids."""
    tu.check_ndim("logits", logits, 2)
    tu.check_last_dim_contiguous("logits", logits)
    tu.check_dtype("temperature", temperature, (torch.float32,))
    device = tu.check_same_device(("logits", logits), ("temperature", temperature))
    n, vocab = logits.shape
    out = torch.empty(n, dtype=torch.int64, device=device)
    if n == 0:
        return out
    tu.launch(
        _gumbel_sample_kernel,
        (n,),
        device,
        logits,
        temperature.contiguous(),
        out,
        seed,
        vocab,
        logits.stride(0),
        BLOCK_V=1024 if device.type == "cuda" else 128,
    )
    return out


def gumbel_sample_ref(
    logits: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The torch reference: the same distribution (not the same draws)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-12, 1 - 1e-7)
    return (logits.float() / temperature.unsqueeze(1) - torch.log(-torch.log(u))).argmax(dim=-1)
