"""Rotary embedding (neox style by default, GPT-J style on request), in place on q and k.

Cache layout (the same as vLLM's `cos_sin_cache`):

    cos_sin_cache [max_position, rot_dim], any float dtype (float32 recommended)
        [:, :rot_dim // 2]  cos(pos * inv_freq[i]),  i = 0 .. rot_dim/2 - 1
        [:, rot_dim // 2:]  sin(pos * inv_freq[i])
    i.e. torch.cat([cos, sin], dim=-1) of HF's un-duplicated frequencies (HF's rotary
    returns cos/sin of width rot_dim with the two halves equal: take the first half).

This is the layout of `pagedllm.layers.rotary.RotaryEmbedding.cos_sin_cache`.

For each head vector x (head_size >= rot_dim; dims >= rot_dim are left as they are):
    neox:  x1 = x[:rot_dim/2],   x2 = x[rot_dim/2:rot_dim]
    GPT-J: x1 = x[0:rot_dim:2],  x2 = x[1:rot_dim:2]
    x1' = x1 * cos - x2 * sin,   x2' = x2 * cos + x1 * sin       (fp32, rounded once)
Torch reference: `rotary_embedding_ref`, RotaryEmbedding's CPU path (layers/rotary.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers.rotary import RotaryEmbedding, rotate_native
from pagedllm.triton_utils import (
    FLOAT_DTYPES,
    check_contiguous,
    check_dtype,
    check_last_dim_contiguous,
    check_ndim,
    check_same_device,
    launch,
    next_power_of_2,
)


@triton.jit
def _rotary_kernel(
    positions_ptr,  # [T] int64
    q_ptr,  # [T, num_q_heads, head_size], strides (stride_qt, stride_qh, 1); in place
    k_ptr,  # [T, num_k_heads, head_size], strides (stride_kt, stride_kh, 1); in place
    cos_sin_ptr,  # [max_position, 2 * HALF_ROT] contiguous: cos | sin
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    NUM_Q_HEADS: tl.constexpr,
    NUM_K_HEADS: tl.constexpr,
    HALF_ROT: tl.constexpr,  # rot_dim // 2
    BLOCK_HQ: tl.constexpr,  # next_power_of_2(NUM_Q_HEADS)
    BLOCK_HK: tl.constexpr,  # next_power_of_2(NUM_K_HEADS)
    BLOCK_R: tl.constexpr,  # next_power_of_2(HALF_ROT)
    IS_NEOX: tl.constexpr,
):
    # grid = (T,): one program rotates every q and k head of one token.
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + t)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < HALF_ROT
    # Offsets of x1 and x2 inside a head vector.
    if IS_NEOX:
        offs_1 = offs_r
        offs_2 = offs_r + HALF_ROT
    else:
        offs_1 = 2 * offs_r
        offs_2 = 2 * offs_r + 1
    cs_row = cos_sin_ptr + pos * (2 * HALF_ROT)
    cos = tl.load(cs_row + offs_r, mask=r_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(cs_row + HALF_ROT + offs_r, mask=r_mask, other=0.0).to(tl.float32)[None, :]

    offs_hq = tl.arange(0, BLOCK_HQ)
    q_mask = (offs_hq[:, None] < NUM_Q_HEADS) & r_mask[None, :]
    q_head = q_ptr + t * stride_qt + offs_hq[:, None] * stride_qh
    q1 = tl.load(q_head + offs_1[None, :], mask=q_mask, other=0.0)
    q2 = tl.load(q_head + offs_2[None, :], mask=q_mask, other=0.0)
    q1f = q1.to(tl.float32)
    q2f = q2.to(tl.float32)
    tl.store(q_head + offs_1[None, :], (q1f * cos - q2f * sin).to(q1.dtype), mask=q_mask)
    tl.store(q_head + offs_2[None, :], (q2f * cos + q1f * sin).to(q1.dtype), mask=q_mask)

    offs_hk = tl.arange(0, BLOCK_HK)
    k_mask = (offs_hk[:, None] < NUM_K_HEADS) & r_mask[None, :]
    k_head = k_ptr + t * stride_kt + offs_hk[:, None] * stride_kh
    k1 = tl.load(k_head + offs_1[None, :], mask=k_mask, other=0.0)
    k2 = tl.load(k_head + offs_2[None, :], mask=k_mask, other=0.0)
    k1f = k1.to(tl.float32)
    k2f = k2.to(tl.float32)
    tl.store(k_head + offs_1[None, :], (k1f * cos - k2f * sin).to(k1.dtype), mask=k_mask)
    tl.store(k_head + offs_2[None, :], (k2f * cos + k1f * sin).to(k1.dtype), mask=k_mask)


def rotary_embedding(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, num_q_heads, head_size], last dim contiguous; rotated in place
    key: torch.Tensor,  # [T, num_k_heads, head_size], last dim contiguous; rotated in place
    cos_sin_cache: torch.Tensor,  # [max_position, rot_dim], cos | sin
    is_neox_style: bool = True,
) -> None:
    """Rotate the first rot_dim dims of every q and k head by its token's position.

    q/k are typically `.view(T, heads, head_size)` of the fused qkv projection's slices."""
    check_rotary_args(positions, query, key, cos_sin_cache)
    num_tokens = positions.shape[0]
    if num_tokens == 0:
        return
    half_rot = cos_sin_cache.shape[1] // 2
    launch(
        _rotary_kernel,
        (num_tokens,),
        query.device,
        positions,
        query,
        key,
        cos_sin_cache,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        NUM_Q_HEADS=query.shape[1],
        NUM_K_HEADS=key.shape[1],
        HALF_ROT=half_rot,
        BLOCK_HQ=next_power_of_2(query.shape[1]),
        BLOCK_HK=next_power_of_2(key.shape[1]),
        BLOCK_R=next_power_of_2(half_rot),
        IS_NEOX=is_neox_style,
    )


def check_rotary_args(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> None:
    """The argument checks of `rotary_embedding` (shared with triton_qk_norm_rotary)."""
    check_ndim("positions", positions, 1)
    check_ndim("query", query, 3)
    check_ndim("key", key, 3)
    check_ndim("cos_sin_cache", cos_sin_cache, 2)
    check_dtype("positions", positions, (torch.int64,))
    check_dtype("query", query, FLOAT_DTYPES)
    check_dtype("cos_sin_cache", cos_sin_cache, FLOAT_DTYPES)
    if key.dtype != query.dtype:
        raise ValueError(f"key dtype {key.dtype} != query dtype {query.dtype}")
    rot_dim = cos_sin_cache.shape[1]
    if rot_dim % 2 or rot_dim > query.shape[2] or key.shape[2] != query.shape[2]:
        raise ValueError(f"rot_dim {rot_dim} must be even and <= head_size {query.shape[2]}")
    if positions.shape[0] > query.shape[0] or positions.shape[0] > key.shape[0]:
        raise ValueError("positions has more rows than query or key")
    check_contiguous("positions", positions)
    check_contiguous("cos_sin_cache", cos_sin_cache)
    check_last_dim_contiguous("query", query)
    check_last_dim_contiguous("key", key)
    check_same_device(
        ("query", query), ("key", key), ("positions", positions), ("cos_sin_cache", cos_sin_cache)
    )


def make_cos_sin_cache(
    rot_dim: int, max_position: int, base: float, device: torch.device | str = "cpu"
) -> torch.Tensor:  # [max_position, rot_dim] float32, cos | sin
    """The plain (unscaled) rope cache in the layout above: RotaryEmbedding's own."""
    rope = RotaryEmbedding(rot_dim, rot_dim, max_position, base)
    return rope.cos_sin_cache.to(device)


def rotary_embedding_ref(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, num_q_heads, head_size]; rotated in place
    key: torch.Tensor,  # [T, num_k_heads, head_size]; rotated in place
    cos_sin_cache: torch.Tensor,  # [max_position, rot_dim]
    is_neox_style: bool = True,
) -> None:
    """Torch reference of `rotary_embedding`: RotaryEmbedding's CPU path
    (rotary.rotate_native), written back in place."""
    cos, sin = cos_sin_cache[positions].float().unsqueeze(1).chunk(2, dim=-1)
    num_tokens = positions.shape[0]
    for x in (query[:num_tokens], key[:num_tokens]):
        x.copy_(rotate_native(x, cos, sin, is_neox_style))
