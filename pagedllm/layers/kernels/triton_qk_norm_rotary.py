"""Qwen3's per-head q/k RMSNorm followed by neox rotary, in place, in one kernel.

For every token t and every q head (weight q_weight) and k head (weight k_weight):
    n  = (x * rsqrt(mean(x^2) + eps)).to(dtype)          per head vector, fp32 math
    y  = (weight * n).to(dtype)                            (HF's Qwen3RMSNorm rounding)
    y1 = y[:D/2], y2 = y[D/2:]                             (neox pairs, rot_dim == D)
    x' = [y1 * cos - y2 * sin, y2 * cos + y1 * sin].to(dtype)   (fp32, rounded once)
which is `rms_norm` then `rotary_embedding` (triton_rms_norm.py, triton_rotary.py) with
the same roundings, without the two round trips through memory between them.

grid = (T,): one program handles every q and k head of one token. The cache layout is
`RotaryEmbedding.cos_sin_cache`: [max_position, D] float32, cos | sin.
Torch reference: `qk_norm_rotary_ref` (the two kernels' references in turn).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers.kernels.triton_rms_norm import rms_norm_ref
from pagedllm.layers.kernels.triton_rotary import check_rotary_args, rotary_embedding_ref
from pagedllm.triton_utils import (
    check_contiguous,
    check_same_device,
    launch,
    next_power_of_2,
)


@triton.jit
def _norm_rotate_heads(
    head_ptr,  # [BLOCK_H, 1] pointers to the start of each head vector
    mask_h,  # [BLOCK_H, 1]
    weight_ptr,  # [D]
    cos,  # [1, HALF] fp32
    sin,  # [1, HALF] fp32
    eps,
    HALF: tl.constexpr,
):
    offs = tl.arange(0, HALF)[None, :]
    x1 = tl.load(head_ptr + offs, mask=mask_h, other=0.0)
    x2 = tl.load(head_ptr + HALF + offs, mask=mask_h, other=0.0)
    dtype = x1.dtype
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    mean_sq = (tl.sum(f1 * f1, 1) + tl.sum(f2 * f2, 1)) / (2 * HALF)
    inv = tl.rsqrt(mean_sq + eps)[:, None]
    w1 = tl.load(weight_ptr + offs).to(tl.float32)
    w2 = tl.load(weight_ptr + HALF + offs).to(tl.float32)
    y1 = (w1 * (f1 * inv).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    y2 = (w2 * (f2 * inv).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    tl.store(head_ptr + offs, (y1 * cos - y2 * sin).to(dtype), mask=mask_h)
    tl.store(head_ptr + HALF + offs, (y2 * cos + y1 * sin).to(dtype), mask=mask_h)


@triton.jit
def _qk_norm_rotary_kernel(
    positions_ptr,  # [T] int64
    q_ptr,  # [T, NUM_Q_HEADS, 2 * HALF], strides (stride_qt, stride_qh, 1); in place
    k_ptr,  # [T, NUM_K_HEADS, 2 * HALF], strides (stride_kt, stride_kh, 1); in place
    q_weight_ptr,  # [2 * HALF]
    k_weight_ptr,  # [2 * HALF]
    cos_sin_ptr,  # [max_position, 2 * HALF] contiguous: cos | sin
    eps,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    NUM_Q_HEADS: tl.constexpr,
    NUM_K_HEADS: tl.constexpr,
    HALF: tl.constexpr,  # head_dim // 2, a power of two
    BLOCK_HQ: tl.constexpr,  # next_power_of_2(NUM_Q_HEADS)
    BLOCK_HK: tl.constexpr,  # next_power_of_2(NUM_K_HEADS)
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + t)
    offs_r = tl.arange(0, HALF)[None, :]
    cos = tl.load(cos_sin_ptr + pos * (2 * HALF) + offs_r).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * (2 * HALF) + HALF + offs_r).to(tl.float32)
    hq = tl.arange(0, BLOCK_HQ)[:, None]
    q_heads = q_ptr + t * stride_qt + hq * stride_qh
    _norm_rotate_heads(q_heads, hq < NUM_Q_HEADS, q_weight_ptr, cos, sin, eps, HALF)
    hk = tl.arange(0, BLOCK_HK)[:, None]
    k_heads = k_ptr + t * stride_kt + hk * stride_kh
    _norm_rotate_heads(k_heads, hk < NUM_K_HEADS, k_weight_ptr, cos, sin, eps, HALF)


def qk_norm_rotary(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, num_q_heads, D], last dim contiguous; changed in place
    key: torch.Tensor,  # [T, num_k_heads, D], last dim contiguous; changed in place
    q_weight: torch.Tensor,  # [D]
    k_weight: torch.Tensor,  # [D]
    eps: float,
    cos_sin_cache: torch.Tensor,  # [max_position, D], cos | sin
) -> None:
    """RMSNorm every q/k head vector (by q_weight / k_weight), then rotate it (neox,
    full head) by its token's position, in place."""
    _check(positions, query, key, q_weight, k_weight, cos_sin_cache)
    num_tokens = positions.shape[0]
    if num_tokens == 0:
        return
    launch(
        _qk_norm_rotary_kernel,
        (num_tokens,),
        query.device,
        positions,
        query,
        key,
        q_weight,
        k_weight,
        cos_sin_cache,
        eps,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        NUM_Q_HEADS=query.shape[1],
        NUM_K_HEADS=key.shape[1],
        HALF=query.shape[2] // 2,
        BLOCK_HQ=next_power_of_2(query.shape[1]),
        BLOCK_HK=next_power_of_2(key.shape[1]),
    )


def supports(head_dim: int, rotary_dim: int, is_neox_style: bool) -> bool:
    """Shapes this kernel handles: a full-head neox rotation of a power-of-two head."""
    return is_neox_style and rotary_dim == head_dim and head_dim == next_power_of_2(head_dim)


def _check(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> None:
    check_rotary_args(positions, query, key, cos_sin_cache)
    head_dim = query.shape[2]
    if not supports(head_dim, cos_sin_cache.shape[1], True):
        raise ValueError(
            f"head_dim {head_dim} must be a power of two equal to the rotary dim "
            f"{cos_sin_cache.shape[1]}"
        )
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (head_dim,):
            raise ValueError(f"{name}: shape {tuple(w.shape)} != ({head_dim},)")
        check_contiguous(name, w)
    check_same_device(("query", query), ("q_weight", q_weight), ("k_weight", k_weight))


def qk_norm_rotary_ref(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    cos_sin_cache: torch.Tensor,
) -> None:
    """Plain-torch reference of `qk_norm_rotary`: the two references one after the other."""
    num_tokens = positions.shape[0]
    query[:num_tokens] = rms_norm_ref(query[:num_tokens], q_weight, eps)[0]
    key[:num_tokens] = rms_norm_ref(key[:num_tokens], k_weight, eps)[0]
    rotary_embedding_ref(positions, query, key, cos_sin_cache, True)
