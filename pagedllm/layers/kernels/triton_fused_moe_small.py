"""The experts for few tokens (decode): no sort by expert, no padded row blocks, no
tensor cores. Each program takes (token, expert) pairs straight from topk_ids and
multiplies one slice of an expert's weight rows by one row by FMA on a [BLOCK_N,
BLOCK_K] float32 register block, summed over K once at the end (like the quantized
GEMV, triton_quant_gemv.py). Torch reference: fused_moe/moe_torch.py.

    gate/up:  grid = (T*k, cdiv(I, BLOCK_N))       program (p, n): pair p = t*k + j,
              expert e = topk_ids.flat[p], token t = p // k; gate rows n*BLOCK_N.. and the
              same up rows I + n*BLOCK_N.. of w13[e] times x[t], then SiLU-and-mul:
              act[p, cols] = silu(g) * u  (rounded like gate_up + silu_and_mul: same as
              the grouped-GEMM path)
    down:     grid = (T, cdiv(H, BLOCK_N), S)       program (t, n, s): the experts
              j in [s*J, (s+1)*J), J = cdiv(k, S), of token t, one flat loop over
              (j, K tile): sum_j topk_weights[t, j] * act[t*k + j] @ w2[e_j][cols].T
              S == 1: written to out[t] in the model dtype; S > 1: float32 partial sums
              [S, T, H] added in order by triton_quant_gemv.sum_splits (deterministic).

Grids and tiles depend on T only (fused_moe/small_tiles.py): CUDA-graph safe. The K
loops are `tl.range(..., num_stages=NUM_STAGES)`: Triton's pipeliner prefetches the
loads of a loop without tl.dot only when the loop carries that attribute (the
num_stages launch option alone leaves them unpipelined); NUM_STAGES = 1: no prefetch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu
from pagedllm.layers.kernels.triton_quant_gemv import split_target, sum_splits


@triton.jit
def _moe_small_gate_up_kernel(
    x_ptr,  # [T, H] strides (stride_xt, 1)
    w13_ptr,  # [E, 2I, H] contiguous: gate rows [0, I), up rows [I, 2I)
    ids_ptr,  # [T*k] int32, flat topk_ids
    act_ptr,  # [T*k, I] contiguous, written
    top_k,
    inter,  # I
    hidden,  # H
    stride_xt,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pair = tl.program_id(0)
    token = pair // top_k
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < inter
    x_ptrs = x_ptr + token.to(tl.int64) * stride_xt + offs_k
    g_ptrs = w13_ptr + expert * 2 * inter * hidden + offs_n[:, None] * hidden + offs_k[None, :]
    u_ptrs = g_ptrs + inter * hidden
    acc_g = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, hidden, BLOCK_K, num_stages=NUM_STAGES):
        k_ok = offs_k < hidden - k0
        x = tl.load(x_ptrs + k0, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        mask = n_ok[:, None] & k_ok[None, :]
        acc_g += tl.load(g_ptrs + k0, mask=mask, other=0.0).to(tl.float32) * x
        acc_u += tl.load(u_ptrs + k0, mask=mask, other=0.0).to(tl.float32) * x
    dtype = act_ptr.dtype.element_ty
    gate = tl.sum(acc_g, axis=1).to(dtype).to(tl.float32)
    up = tl.sum(acc_u, axis=1).to(dtype).to(tl.float32)
    silu = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
    tl.store(act_ptr + pair.to(tl.int64) * inter + offs_n, (silu * up).to(dtype), mask=n_ok)


# num_tokens and experts_per_split follow the batch size (see triton_utils).
@triton.jit(do_not_specialize=["num_tokens", "experts_per_split"])
def _moe_small_down_kernel(
    act_ptr,  # [T*k, I] contiguous
    w2_ptr,  # [E, H, I] contiguous
    ids_ptr,  # [T*k] int32, flat topk_ids
    weights_ptr,  # [T*k] float32, flat topk_weights
    out_ptr,  # PARTIAL: [S, T, H] float32; else [T, H] contiguous in act's dtype
    num_tokens,
    top_k,
    hidden,  # H
    inter,  # I
    experts_per_split,  # J
    PARTIAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    token, split = tl.program_id(0), tl.program_id(2)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < hidden
    w_rows = w2_ptr + offs_n[:, None] * inter + offs_k[None, :]
    first = token * top_k + split * experts_per_split  # first pair of this split
    last = tl.minimum(first + experts_per_split, (token + 1) * top_k)
    chunks = tl.cdiv(inter, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    # (pair, K tile) in one pipelined loop
    for it in tl.range(0, (last - first) * chunks, num_stages=NUM_STAGES):
        pair = first + it // chunks
        k0 = (it % chunks) * BLOCK_K
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        k_ok = offs_k < inter - k0
        a = tl.load(act_ptr + pair.to(tl.int64) * inter + k0 + offs_k, mask=k_ok, other=0.0)
        a = a.to(tl.float32) * tl.load(weights_ptr + pair)
        mask = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_rows + expert * hidden * inter + k0, mask=mask, other=0.0)
        acc += w.to(tl.float32) * a[None, :]
    y = tl.sum(acc, axis=1)
    if PARTIAL:
        base = out_ptr + (split.to(tl.int64) * num_tokens + token) * hidden
        tl.store(base + offs_n, y, mask=n_ok)
    else:
        base = out_ptr + token.to(tl.int64) * hidden
        tl.store(base + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


def _check_inputs(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, ids: torch.Tensor) -> None:
    tu.check_dtype("hidden_states", x, tu.FLOAT_DTYPES)
    tu.check_ndim("hidden_states", x, 2)
    tu.check_last_dim_contiguous("hidden_states", x)
    tu.check_contiguous("w13", w13)
    tu.check_contiguous("w2", w2)
    tu.check_same_device(("hidden_states", x), ("w13", w13), ("w2", w2), ("topk_ids", ids))
    e, two_inter, hidden = w13.shape
    if hidden != x.shape[1] or tuple(w2.shape) != (e, hidden, two_inter // 2):
        raise ValueError(
            f"shapes: hidden_states {tuple(x.shape)} w13 {tuple(w13.shape)} w2 {tuple(w2.shape)}"
        )
    if w13.dtype != x.dtype or w2.dtype != x.dtype:
        raise ValueError(f"dtypes: hidden_states {x.dtype} w13 {w13.dtype} w2 {w2.dtype}")


def moe_small_gate_up(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    topk_ids: torch.Tensor,  # [T, k] int32
    tile: tuple[int, int, int, int],  # BLOCK_N, BLOCK_K, num_warps, num_stages
) -> torch.Tensor:  # act [T*k, I] = silu(gate) * up of each pair
    pairs, inter, hidden = topk_ids.numel(), w13.shape[1] // 2, w13.shape[2]
    act = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)
    block_n, block_k, warps, stages = tile
    tu.launch(
        _moe_small_gate_up_kernel,
        (pairs, tu.cdiv(inter, block_n)),
        x.device,
        x, w13, topk_ids, act, topk_ids.shape[1], inter, hidden, x.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, NUM_STAGES=stages, num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    return act


def moe_small_down(
    act: torch.Tensor,  # [T*k, I]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k] float32
    topk_ids: torch.Tensor,  # [T, k] int32
    tile: tuple[int, int, int, int, int],  # BLOCK_N, BLOCK_K, num_warps, num_stages, splits
) -> torch.Tensor:  # [T, H]: the routing-weighted sum over each token's k experts
    (num_tokens, top_k), (_, hidden, inter) = topk_ids.shape, w2.shape
    out = torch.empty((num_tokens, hidden), dtype=act.dtype, device=act.device)
    block_n, block_k, warps, stages, splits = tile
    per_split = tu.cdiv(top_k, min(max(splits, 1), top_k))
    splits = tu.cdiv(top_k, per_split)
    target = split_target(out, splits)
    tu.launch(
        _moe_small_down_kernel,
        (num_tokens, tu.cdiv(hidden, block_n), splits),
        act.device,
        act, w2, topk_ids, topk_weights, target, num_tokens, top_k, hidden, inter, per_split,
        PARTIAL=splits > 1, BLOCK_N=block_n, BLOCK_K=block_k, NUM_STAGES=stages,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    if splits > 1:
        sum_splits(target, out)
    return out


def fused_experts_small(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H] contiguous
    w2: torch.Tensor,  # [E, H, I] contiguous
    topk_weights: torch.Tensor,  # [T, k] float32
    topk_ids: torch.Tensor,  # [T, k] int32
    tiles: tuple[tuple[int, int, int, int], tuple[int, int, int, int, int]],
) -> torch.Tensor:  # [T, H]
    """Two launches (three with split S > 1); `tiles` = (gate/up tile, down tile)."""
    _check_inputs(hidden_states, w13, w2, topk_ids)
    ids = topk_ids.to(torch.int32).contiguous()
    weights = topk_weights.float().contiguous()
    act = moe_small_gate_up(hidden_states, w13, ids, tiles[0])
    return moe_small_down(act, w2, weights, ids, tiles[1])
