"""Paged attention for prefill and chunked prefill (any query length, decode included).

Each sequence b owns query rows [query_start_loc[b], query_start_loc[b+1]) = q_len rows,
and seq_lens[b] cached tokens (the new chunk already written); query row j sits at
position ctx_len + j with ctx_len = seq_len - q_len:

    cache positions  |------ ctx_len (cached prefix) ------|---- q_len (this chunk) ----|
    causal: row j attends to positions 0 .. ctx_len + j;  non-causal: to all seq_len.
    sliding window W (HF's convention): only positions > ctx_len + j - W as well, so a
    query tile starts its key loop at its first row's window start, and key blocks left
    of it are never loaded:

    keys  |--- skipped ---|-- window of the tile's first row --|-- tile's rows --|
          0          ctx_len + qt*BLOCK_Q - W + 1        ctx_len + qt*BLOCK_Q
    soft-cap c (Gemma 2): scores s -> c * tanh(s / c) before mask and softmax.

Programs:
    grid = (B, cdiv(max_query_len, BLOCK_Q), num_kv_heads)       program (b, qt, kvh)
    rows r of the tile (BLOCK_M = BLOCK_Q * GROUP_PAD): query j = qt*BLOCK_Q + r // GROUP_PAD,
    head kvh*GROUP + r % GROUP_PAD; so one K/V tile serves all GROUP heads of its kv head.
    Programs with qt*BLOCK_Q >= q_len exit (max_query_len bounds the grid, a host int).
Keys are gathered BLOCK_N at a time through block_tables (any block_size), with an online
softmax in base 2 and fp32 accumulation. Rows of sequences with q_len 0 are not written.
Torch reference: the torch attention backend (layers/attention/torch_backend.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers.kernels.triton_online_softmax import attend_paged_keys
from pagedllm.triton_utils import (
    FLOAT_DTYPES,
    cdiv,
    check_contiguous,
    check_dtype,
    check_last_dim_contiguous,
    check_ndim,
    check_same_device,
    dot_precision,
    launch,
    next_power_of_2,
)

LOG2_E = 1.4426950408889634


@triton.jit(do_not_specialize=["stride_bt"])  # varies by step: see triton_utils
def _prefill_attention_kernel(
    q_ptr,  # [T, num_heads, head_dim], strides (stride_qt, stride_qh, 1)
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim] = kv_cache[0], contiguous
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim] = kv_cache[1], contiguous
    block_tables_ptr,  # [B, max_blocks_per_seq] int32, strides (stride_bt, 1)
    seq_lens_ptr,  # [B] int32
    query_start_loc_ptr,  # [B + 1] int32
    out_ptr,  # [T, num_heads, head_dim], strides (stride_ot, stride_oh, 1)
    scale_log2,  # softmax scale * log2(e)
    window,  # sliding window in keys (read only when SLIDING_WINDOW)
    soft_cap,  # logit soft-cap (read only when SOFT_CAP)
    stride_qt,
    stride_qh,
    stride_bt,
    stride_ot,
    stride_oh,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # q heads per kv head
    GROUP_PAD: tl.constexpr,  # next_power_of_2(GROUP)
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per KV cache block
    BLOCK_Q: tl.constexpr,  # query tokens per program
    BLOCK_M: tl.constexpr,  # BLOCK_Q * GROUP_PAD >= 16 rows per program
    BLOCK_D: tl.constexpr,  # next_power_of_2(HEAD_DIM)
    BLOCK_N: tl.constexpr,  # keys per loop step
    CAUSAL: tl.constexpr,
    SLIDING_WINDOW: tl.constexpr,
    SOFT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    qt = tl.program_id(1)
    kvh = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + b)
    q_len = tl.load(query_start_loc_ptr + b + 1) - q_start
    if qt * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    ctx_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    tok = qt * BLOCK_Q + offs_m // GROUP_PAD  # [BLOCK_M] query index inside the chunk
    g = offs_m % GROUP_PAD
    head = kvh * GROUP + g
    # A constant mask where head_dim is a power of two keeps K/V loads 16-byte vectors.
    if BLOCK_D == HEAD_DIM:
        d_mask = tl.full([BLOCK_D], 1, tl.int1)
    else:
        d_mask = offs_d < HEAD_DIM
    m_mask = (tok < q_len) & (g < GROUP)
    q_row = (q_start + tok).to(tl.int64)
    q_off = q_row[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptr + q_off, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    q_pos = ctx_len + tok  # [BLOCK_M] absolute position of each row's query token

    if CAUSAL:
        kv_end = tl.minimum(seq_len, ctx_len + tl.minimum((qt + 1) * BLOCK_Q, q_len))
    else:
        kv_end = seq_len

    # Key 0 is visible to every row (q_pos >= 0) and sits in the first loop step; with a
    # window the loop starts where the tile's first row's window does (no row sees less).
    kv_start = 0
    if SLIDING_WINDOW:
        kv_start = tl.maximum(ctx_len + qt * BLOCK_Q - window + 1, 0)
    table_row = block_tables_ptr + b.to(tl.int64) * stride_bt
    acc, l_sum, m = attend_paged_keys(
        q,
        q_pos,
        k_cache_ptr,
        v_cache_ptr,
        table_row,
        kvh,
        kv_start,
        kv_end,
        scale_log2,
        window,
        soft_cap,
        d_mask,
        NUM_KV_HEADS,
        HEAD_DIM,
        BLOCK_SIZE,
        BLOCK_M,
        BLOCK_D,
        BLOCK_N,
        CAUSAL,
        SLIDING_WINDOW,
        SOFT_CAP,
        DOT_PRECISION,
    )
    out = acc / tl.where(l_sum > 0.0, l_sum, 1.0)[:, None]
    o_off = q_row[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
    tl.store(
        out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :]
    )


def prefill_attention(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [B] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    max_query_len: int,
    scale: float,
    causal: bool = True,
    out: torch.Tensor | None = None,  # [T, num_heads, head_dim]
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim], query.dtype
    """Varlen paged attention; rows not covered by query_start_loc are left unwritten.
    `sliding_window` W: a query at position q sees keys at positions > q - W;
    `soft_cap` c: scores -> c * tanh(scores / c). None (the default) turns either off."""
    _check_prefill_args(query, kv_cache, block_tables, seq_lens, query_start_loc, block_m, block_n)
    check_window_and_soft_cap(sliding_window, soft_cap)
    out = _output(query, out)
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0 or max_query_len <= 0:
        return out
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    group_pad = next_power_of_2(group)
    if query.dtype == torch.float32:
        block_n = min(block_n, 32)  # fp32 tiles are twice the bytes: keep shared memory in bounds
    block_q = max(1, block_m // group_pad)
    launch(
        _prefill_attention_kernel,
        (num_seqs, cdiv(max_query_len, block_q), num_kv_heads),
        query.device,
        query,
        kv_cache[0],
        kv_cache[1],
        block_tables,
        seq_lens,
        query_start_loc,
        out,
        scale * LOG2_E,
        sliding_window or 0,
        soft_cap or 0.0,
        query.stride(0),
        query.stride(1),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        GROUP_PAD=group_pad,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=kv_cache.shape[2],
        BLOCK_Q=block_q,
        BLOCK_M=block_q * group_pad,
        BLOCK_D=next_power_of_2(head_dim),
        BLOCK_N=block_n,
        CAUSAL=causal,
        SLIDING_WINDOW=sliding_window is not None,
        SOFT_CAP=soft_cap is not None,
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def check_window_and_soft_cap(sliding_window: int | None, soft_cap: float | None) -> None:
    """Checks shared by the decode and prefill launchers."""
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    if soft_cap is not None and not soft_cap > 0.0:
        raise ValueError(f"soft_cap must be > 0 or None, got {soft_cap}")


def _output(query: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty_like(query, memory_format=torch.contiguous_format)
    if out.shape != query.shape or out.dtype != query.dtype or out.stride(-1) != 1:
        raise ValueError("out must be like query, last dim contiguous")
    return out


def _check_prefill_args(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [B] int32
    query_start_loc: torch.Tensor,  # [B + 1] int32
    block_m: int,
    block_n: int,
) -> None:
    check_ndim("query", query, 3)
    check_paged_args(query, kv_cache, block_tables, seq_lens)
    check_dtype("query_start_loc", query_start_loc, (torch.int32,))
    check_contiguous("query_start_loc", query_start_loc)
    if query_start_loc.shape[0] != seq_lens.shape[0] + 1:
        raise ValueError("query_start_loc must have one entry more than seq_lens")
    if block_n < 16 or block_n & (block_n - 1) or block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"block_m and block_n must be powers of two >= 16: {block_m}, {block_n}")


def check_paged_args(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [B] int32
) -> None:
    """Checks shared by the decode and prefill launchers."""
    check_ndim("kv_cache", kv_cache, 5)
    check_ndim("block_tables", block_tables, 2)
    check_ndim("seq_lens", seq_lens, 1)
    num_heads, head_dim = query.shape[1], query.shape[2]
    if kv_cache.shape[0] != 2 or kv_cache.shape[4] != head_dim:
        raise ValueError(
            f"kv_cache {tuple(kv_cache.shape)} does not fit query {tuple(query.shape)}"
        )
    if num_heads % kv_cache.shape[3] != 0:
        raise ValueError(
            f"num_heads {num_heads} not a multiple of num_kv_heads {kv_cache.shape[3]}"
        )
    if head_dim < 16:
        raise ValueError(f"head_dim must be >= 16, got {head_dim}")
    check_dtype("query", query, FLOAT_DTYPES)
    if kv_cache.dtype != query.dtype:
        raise ValueError(f"kv_cache dtype {kv_cache.dtype} != query dtype {query.dtype}")
    check_dtype("block_tables", block_tables, (torch.int32,))
    check_dtype("seq_lens", seq_lens, (torch.int32,))
    if block_tables.shape[0] < seq_lens.shape[0]:
        raise ValueError("block_tables has fewer rows than seq_lens")
    check_last_dim_contiguous("query", query)
    check_contiguous("kv_cache", kv_cache)
    check_last_dim_contiguous("block_tables", block_tables)
    check_contiguous("seq_lens", seq_lens)
    check_same_device(
        ("query", query),
        ("kv_cache", kv_cache),
        ("block_tables", block_tables),
        ("seq_lens", seq_lens),
    )
