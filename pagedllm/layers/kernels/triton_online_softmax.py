"""The inner loop shared by the paged attention kernels (decode and prefill): an online
softmax (base 2, float32 accumulation) of a tile of query rows over keys gathered
BLOCK_N at a time through one sequence's block-table row. A Triton helper: it is
inlined into each kernel that calls it.

Gemma's options, each behind a constexpr flag so that the plain kernels compile as
before:
    SLIDING_WINDOW: row r sees key p only if p > q_pos[r] - window (HF's convention:
        a window of W keys ending at the query). The callers start the loop at the
        first key any row of the tile can see, so blocks left of the window are never
        loaded; this mask trims the rest.
    SOFT_CAP: scores s -> c * tanh(s / c) before the mask and the softmax (Gemma 2),
        with tanh(x) = 1 - 2 / (exp(2x) + 1), exact at both ends (exp -> inf gives 1,
        exp -> 0 gives -1) and free of libdevice, so the interpreter runs it too.
Torch reference: that of its callers, the torch attention backend
(layers/attention/torch_backend.py); it is tested through them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_paged_keys(
    q,  # [BLOCK_M, BLOCK_D] query rows (padded rows are 0)
    q_pos,  # [BLOCK_M] absolute position of each row's token (read with CAUSAL/SLIDING_WINDOW)
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    v_cache_ptr,  # same layout
    table_row,  # pointer to this sequence's block-table row (int32)
    kvh,  # the kv head
    start,
    end,  # keys [start, end) of the sequence
    scale_log2,  # softmax scale * log2(e)
    window,  # keys per sliding window (read only when SLIDING_WINDOW)
    soft_cap,  # the soft-cap c (read only when SOFT_CAP)
    d_mask,  # [BLOCK_D] real head-dim columns
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per KV cache block
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,  # keys per loop step
    CAUSAL: tl.constexpr,  # row r sees key p only if p <= q_pos[r]
    SLIDING_WINDOW: tl.constexpr,  # row r sees key p only if p > q_pos[r] - window
    SOFT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """(acc, l_sum, m): the unnormalised output, the softmax denominators and the running
    maxima (base 2) of each row. The callers guarantee that every row sees a key in the
    first loop step (or has q = 0), so m is finite from then on and no step computes
    inf - inf; a row that saw no key has l_sum 0. With SLIDING_WINDOW a row may see no
    key in the first steps (its window starts further right than the tile's first row's),
    so there the offsets are made safe: a row with m = -inf keeps acc = l_sum = 0."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n in range(start, end, BLOCK_N):
        pos = n + offs_n
        n_mask = pos < end
        blk = tl.load(table_row + pos // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        # Row of (slot, kvh) in the contiguous [num_blocks * block_size * num_kv_heads, D] view.
        row = (blk * BLOCK_SIZE + pos % BLOCK_SIZE) * NUM_KV_HEADS + kvh
        kv_off = row[:, None] * HEAD_DIM + offs_d[None, :]
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        if SOFT_CAP:  # qk = s*log2e -> c*log2e * tanh(s/c), exp(2s/c) = exp2(2qk/c)
            e = tl.exp2(qk * (2.0 / soft_cap))
            qk = (soft_cap * 1.4426950408889634) * (1.0 - 2.0 / (e + 1.0))
        visible = n_mask[None, :]
        if CAUSAL:
            visible = visible & (pos[None, :] <= q_pos[:, None])
        if SLIDING_WINDOW:
            visible = visible & (pos[None, :] > q_pos[:, None] - window)
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m, tl.max(qk, 1))
        if SLIDING_WINDOW:  # a row with no key so far: offset 0, not -inf (m stays -inf)
            m_off = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_off = m_new
        alpha = tl.exp2(m - m_off)
        p = tl.exp2(qk - m_off[:, None])
        l_sum = l_sum * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new
    return acc, l_sum, m
