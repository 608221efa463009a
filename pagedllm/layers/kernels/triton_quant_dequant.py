"""W^T [K, N] in x's dtype from K-packed integer weights (int_packing.py), for many
rows: dequantizing the whole weight once and multiplying with cuBLAS beats
dequantizing it in every row block of a fused kernel once a step has tens of rows
(prefill). Torch reference: int_packing.dequantize_ref.

    grid = (cdiv(K / p, BLOCK_R), cdiv(N, BLOCK_N))   p = 32 / bits codes per word
    word row r holds weight rows r*p + j (j < p) at bits j*bits
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu


@triton.jit
def _dequant_kernel(
    qw_ptr,  # [K // PACK, N] int32
    s_ptr,  # [G, N] scales
    z_ptr,  # [G, N] float zero points
    gidx_ptr,  # [K] int32 group of each row (HAS_GIDX)
    out_ptr,  # [K, N]
    N,
    num_word_rows,
    group_size,
    BITS: tl.constexpr,
    HAS_GIDX: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    PACK: tl.constexpr = 32 // BITS
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < num_word_rows)[:, None] & (offs_n < N)[None, :]
    words = tl.load(qw_ptr + rows.to(tl.int64)[:, None] * N + offs_n[None, :], mask=mask, other=0)
    for j in tl.static_range(PACK):
        k = rows * PACK + j
        if HAS_GIDX:
            g = tl.load(gidx_ptr + k, mask=rows < num_word_rows, other=0)
        else:
            g = k // group_size
        sz = g.to(tl.int64)[:, None] * N + offs_n[None, :]
        s = tl.load(s_ptr + sz, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + sz, mask=mask, other=0.0).to(tl.float32)
        q = ((words >> (j * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
        w = (q - z) * s
        out = out_ptr + k.to(tl.int64)[:, None] * N + offs_n[None, :]
        tl.store(out, w.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_packed(
    qweight: torch.Tensor,  # [K // (32/bits), N] int32 contiguous
    bits: int,
    group_size: int,
    scales: torch.Tensor,  # [G, N]
    zeros: torch.Tensor,  # [G, N] float
    dtype: torch.dtype,
    g_idx: torch.Tensor | None = None,  # [K] int32
) -> torch.Tensor:  # [K, N] in dtype
    word_rows, n = qweight.shape
    out = torch.empty((word_rows * (32 // bits), n), dtype=dtype, device=qweight.device)
    block_r, block_n = 16, 128
    tu.launch(
        _dequant_kernel,
        (tu.cdiv(word_rows, block_r), tu.cdiv(n, block_n)),
        qweight.device,
        qweight,
        scales,
        zeros,
        g_idx if g_idx is not None else qweight,
        out,
        n,
        word_rows,
        group_size,
        BITS=bits,
        HAS_GIDX=g_idx is not None,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        num_warps=4,
    )
    return out
