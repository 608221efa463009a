"""Paged attention for decode: one query token per sequence, split-K over the context.

Programs and index ranges (flash-decoding):

    grid = (B, num_kv_heads, num_splits)          program (b, kvh, s)
    q rows   : heads kvh*G .. kvh*G+G-1 of token b   (G = num_heads // num_kv_heads)
               padded to BLOCK_H >= 16 rows so one tl.dot serves the whole group and
               each K/V tile is read from memory once for all G heads
    keys     : [lo + s*L, min(lo + (s+1)*L, seq_len))
               with L = cdiv(cdiv(seq_len - lo, S), BLOCK_N) * BLOCK_N
               (L is per sequence, so any seq_len works with a fixed num_splits: splits past
               the end are empty and write lse = -inf, out = 0)
    lo       : 0, or with a sliding window W max(0, seq_len - W): the token at seq_len - 1
               sees positions > seq_len - 1 - W (HF's convention), so the splits share out
               the window alone and no key block left of it is loaded
A logit soft-cap c (Gemma 2) maps scores s -> c * tanh(s / c) before the softmax.

With num_splits == 1 the partial kernel normalises and writes the output itself.
Otherwise it writes per split a normalised partial output and its log-sum-exp (base 2),
and the reduce kernel (grid = (B, num_heads)) merges the splits:
    out = sum_s 2^(lse_s - max lse) * out_s / sum_s 2^(lse_s - max lse).
A sequence of seq_len 0 (a padded row) gets an all-zero output. The launch reads shapes
from host ints only, so it can be captured in a CUDA graph.
Torch reference: the torch attention backend (layers/attention/torch_backend.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers.kernels.triton_online_softmax import attend_paged_keys
from pagedllm.layers.kernels.triton_prefill_attention import (
    check_paged_args,
    check_window_and_soft_cap,
)
from pagedllm.triton_utils import (
    cdiv,
    check_ndim,
    dot_precision,
    launch,
    next_power_of_2,
    num_sms,
)

LOG2_E = 1.4426950408889634
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 32


@triton.jit(do_not_specialize=["stride_bt"])  # varies by step: see triton_utils
def _decode_partial_kernel(
    q_ptr,  # [B, num_heads, head_dim], strides (stride_qb, stride_qh, 1)
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim] = kv_cache[0], contiguous
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim] = kv_cache[1], contiguous
    block_tables_ptr,  # [B, max_blocks_per_seq] int32, strides (stride_bt, 1)
    seq_lens_ptr,  # [B] int32
    out_ptr,  # NUM_SPLITS == 1: [B, num_heads, head_dim], strides (stride_ob, stride_oh, 1)
    # NUM_SPLITS > 1: partial outputs [B, num_heads, NUM_SPLITS, head_dim] fp32, contiguous
    lse_ptr,  # [B, num_heads, NUM_SPLITS] fp32, contiguous (unused when NUM_SPLITS == 1)
    scale_log2,  # softmax scale * log2(e)
    window,  # sliding window in keys (read only when SLIDING_WINDOW)
    soft_cap,  # logit soft-cap (read only when SOFT_CAP)
    stride_qb,
    stride_qh,
    stride_bt,
    stride_ob,
    stride_oh,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # q heads per kv head
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per KV cache block
    BLOCK_H: tl.constexpr,  # max(16, next_power_of_2(GROUP))
    BLOCK_D: tl.constexpr,  # next_power_of_2(HEAD_DIM)
    BLOCK_N: tl.constexpr,  # keys per loop step
    NUM_SPLITS: tl.constexpr,
    SLIDING_WINDOW: tl.constexpr,
    SOFT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    if SLIDING_WINDOW:
        kv_lo = tl.maximum(seq_len - window, 0)
        split_len = tl.cdiv(tl.cdiv(seq_len - kv_lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
        start = kv_lo + split * split_len
    else:
        split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
        start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_g = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    head = kvh * GROUP + offs_g
    # A constant mask where head_dim is a power of two keeps K/V loads 16-byte vectors.
    if BLOCK_D == HEAD_DIM:
        d_mask = tl.full([BLOCK_D], 1, tl.int1)
    else:
        d_mask = offs_d < HEAD_DIM
    gd_mask = (offs_g[:, None] < GROUP) & d_mask[None, :]
    q_off = b.to(tl.int64) * stride_qb + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptr + q_off, mask=gd_mask, other=0.0)
    table_row = block_tables_ptr + b.to(tl.int64) * stride_bt
    acc, l_sum, m = attend_paged_keys(
        q,
        0,  # q_pos: not read (no CAUSAL, no SLIDING_WINDOW: [start, end) is all visible)
        k_cache_ptr,
        v_cache_ptr,
        table_row,
        kvh,
        start,
        end,
        scale_log2,
        0,  # window: the key range above applies it
        soft_cap,
        d_mask,
        NUM_KV_HEADS,
        HEAD_DIM,
        BLOCK_SIZE,
        BLOCK_H,
        BLOCK_D,
        BLOCK_N,
        False,  # CAUSAL: the one query token is the last, every key is visible
        False,  # SLIDING_WINDOW: so is every key of [start, end)
        SOFT_CAP,
        DOT_PRECISION,
    )
    _store_split(
        out_ptr,
        lse_ptr,
        acc,
        l_sum,
        m,
        b,
        head,
        split,
        gd_mask,
        offs_g < GROUP,
        stride_ob,
        stride_oh,
        NUM_KV_HEADS * GROUP,
        HEAD_DIM,
        BLOCK_D,
        NUM_SPLITS,
    )


@triton.jit
def _store_split(
    out_ptr,
    lse_ptr,
    acc,
    l_sum,
    m,
    b,
    head,  # [BLOCK_H] q head of each row
    split,
    gd_mask,
    g_mask,  # rows that are real heads
    stride_ob,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """One split's normalised output: the final output when NUM_SPLITS == 1, else a
    float32 partial and its log-sum-exp for the reduce kernel."""
    offs_d = tl.arange(0, BLOCK_D)
    has_keys = l_sum > 0.0
    out = acc / tl.where(has_keys, l_sum, 1.0)[:, None]
    if NUM_SPLITS == 1:
        o_off = b.to(tl.int64) * stride_ob + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=gd_mask)
    else:
        row_s = (b.to(tl.int64) * NUM_HEADS + head) * NUM_SPLITS + split  # [BLOCK_H]
        tl.store(out_ptr + row_s[:, None] * HEAD_DIM + offs_d[None, :], out, mask=gd_mask)
        lse = tl.where(has_keys, m + tl.log2(tl.where(has_keys, l_sum, 1.0)), float("-inf"))
        tl.store(lse_ptr + row_s, lse, mask=g_mask)


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr,  # [B, num_heads, NUM_SPLITS, head_dim] fp32, contiguous
    lse_ptr,  # [B, num_heads, NUM_SPLITS] fp32, contiguous, -inf for an empty split
    out_ptr,  # [B, num_heads, head_dim], strides (stride_ob, stride_oh, 1)
    stride_ob,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,  # next_power_of_2(NUM_SPLITS)
    BLOCK_D: tl.constexpr,  # next_power_of_2(HEAD_DIM)
):
    # grid = (B, num_heads): one program merges the splits of one (token, head).
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    d_mask = offs_d < HEAD_DIM
    row = (b * NUM_HEADS + h) * NUM_SPLITS
    lse = tl.load(lse_ptr + row + offs_s, mask=s_mask, other=float("-inf"))
    lse_max = tl.max(lse, 0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # seq_len 0: all weights 0
    w = tl.exp2(lse - lse_max)
    denom = tl.sum(w, 0)
    part_off = (row + offs_s[:, None]) * HEAD_DIM + offs_d[None, :]
    part = tl.load(part_out_ptr + part_off, mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    out = tl.sum(part * w[:, None], 0) / tl.where(denom > 0.0, denom, 1.0)
    o_off = b * stride_ob + h * stride_oh + offs_d
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device
) -> int:
    """Enough splits to give every SM two programs, none shorter than 256 keys, at most 32.

    Depends on host ints only. A CUDA graph captured with the largest max_seq_len it will
    replay stays correct for shorter sequences (their extra splits are empty)."""
    programs = max(num_seqs * num_kv_heads, 1)
    wanted = cdiv(2 * num_sms(device), programs)
    by_length = cdiv(max(max_seq_len, 1), MIN_TOKENS_PER_SPLIT)
    return max(1, min(wanted, by_length, MAX_SPLITS))


def decode_attention(
    query: torch.Tensor,  # [B, num_heads, head_dim], token b belongs to sequence b
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    num_splits: int = 1,
    out: torch.Tensor | None = None,  # [B, num_heads, head_dim]
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [B, num_heads, head_dim], query.dtype
    """Attend query row b (the last token of sequence b) to its seq_lens[b] cached tokens.

    Only rows < seq_lens.shape[0] are written; rows with seq_lens 0 get zeros.
    `sliding_window` W: only the last W keys; `soft_cap` c: scores -> c * tanh(scores / c)."""
    _check_decode_args(query, kv_cache, block_tables, seq_lens, num_splits, block_n)
    check_window_and_soft_cap(sliding_window, soft_cap)
    out = _output(query, out)
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0:
        return out
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    part_out, lse = _workspace(out, num_seqs, num_splits)
    launch(
        _decode_partial_kernel,
        (num_seqs, num_kv_heads, num_splits),
        query.device,
        query,
        kv_cache[0],
        kv_cache[1],
        block_tables,
        seq_lens,
        part_out,
        lse,
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
        HEAD_DIM=head_dim,
        BLOCK_SIZE=kv_cache.shape[2],
        BLOCK_H=max(16, next_power_of_2(group)),
        BLOCK_D=next_power_of_2(head_dim),
        BLOCK_N=block_n,
        NUM_SPLITS=num_splits,
        SLIDING_WINDOW=sliding_window is not None,
        SOFT_CAP=soft_cap is not None,
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1:
        _reduce(part_out, lse, out, num_seqs)
    return out


def _check_decode_args(
    query: torch.Tensor,  # [B, num_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [B, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [B] int32
    num_splits: int,
    block_n: int,
) -> None:
    check_ndim("query", query, 3)
    num_seqs = seq_lens.shape[0]
    if query.shape[0] < num_seqs:
        raise ValueError(f"query has {query.shape[0]} rows < {num_seqs} sequences")
    check_paged_args(query, kv_cache, block_tables, seq_lens)
    if num_splits < 1 or block_n < 16 or block_n & (block_n - 1):
        raise ValueError(
            f"need num_splits >= 1 and block_n a power of two >= 16, got {num_splits}, {block_n}"
        )


def _output(query: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty_like(query, memory_format=torch.contiguous_format)
    if out.shape != query.shape or out.dtype != query.dtype or out.stride(-1) != 1:
        raise ValueError(
            f"out must be like query {tuple(query.shape)} {query.dtype}, last dim contiguous"
        )
    return out


def _workspace(
    out: torch.Tensor, num_seqs: int, num_splits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial outputs [B, H, S, D] fp32, lse [B, H, S] fp32); with one split the partial
    kernel writes `out` itself and ignores the lse pointer."""
    if num_splits == 1:
        return out, out
    num_heads, head_dim = out.shape[1], out.shape[2]
    part_out = torch.empty(
        (num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=out.device
    )
    lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=out.device)
    return part_out, lse


def _reduce(part_out: torch.Tensor, lse: torch.Tensor, out: torch.Tensor, num_seqs: int) -> None:
    num_heads, num_splits, head_dim = part_out.shape[1:]
    launch(
        _decode_reduce_kernel,
        (num_seqs, num_heads),
        out.device,
        part_out,
        lse,
        out,
        out.stride(0),
        out.stride(1),
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        NUM_SPLITS=num_splits,
        BLOCK_S=next_power_of_2(num_splits),
        BLOCK_D=next_power_of_2(head_dim),
    )
