"""y = x @ W^T for weights in the common K-packed layout (int_packing.py): the tile of
W is dequantized in registers ((q - z) * s, or a lookup table) and multiplied there.

    grid = (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), S)       program (m, n, s)
    rows    : x rows [m*BLOCK_M, ...), output columns [n*BLOCK_N, ...)
    K range : [s*L, min((s+1)*L, K)) with L = chunks_per_split * BLOCK_K
S > 1 (split-K, for decode's few rows) writes float32 partial sums to part [S, M, N],
added in order afterwards (deterministic). BLOCK_K is a multiple of the pack factor,
so a tile starts at a word boundary: its words [BLOCK_K/p, BLOCK_N] are loaded once
and unpacked by broadcasting shifts ([BLOCK_K/p, p, BLOCK_N] -> [BLOCK_K, BLOCK_N]).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers import triton_utils as tu


@triton.jit
def _quant_gemm_kernel(
    x_ptr,  # [M, K], row stride stride_xm, last dim contiguous
    qw_ptr,  # [K // PACK, N] int32 contiguous
    s_ptr,  # [G, N] scales (not LUT), contiguous
    z_ptr,  # [G, N] float zero points (not LUT), contiguous
    gidx_ptr,  # [K] int32 group of each row (ROW_GROUPS with HAS_GIDX)
    lut_ptr,  # [N, 16] lookup table (LUT), contiguous
    out_ptr,  # S == 1: y [M, N] in x.dtype; else part [S, M, N] float32
    M,
    N,
    K,
    stride_xm,
    group_size,
    chunks_per_split,
    BITS: tl.constexpr,
    LUT: tl.constexpr,
    HAS_GIDX: tl.constexpr,
    ROW_GROUPS: tl.constexpr,  # scales differ within a K tile (g_idx, small groups)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PARTIAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    PACK: tl.constexpr = 32 // BITS
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_K // PACK)
    offs_k = tl.arange(0, BLOCK_K)
    shifts = tl.arange(0, PACK) * BITS
    m_mask, n_mask = offs_m < M, offs_n < N
    lo = split * chunks_per_split * BLOCK_K
    hi = tl.minimum(lo + chunks_per_split * BLOCK_K, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_K):
        k = start + offs_k
        k_mask = k < hi
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + k[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        words_row = start // PACK + offs_w
        words = tl.load(
            qw_ptr + words_row.to(tl.int64)[:, None] * N + offs_n[None, :],
            mask=(words_row < hi // PACK)[:, None] & n_mask[None, :],
            other=0,
        )
        q = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)
        q = tl.reshape(q, (BLOCK_K, BLOCK_N))
        if LUT:
            w = tl.load(lut_ptr + offs_n[None, :] * 16 + q, mask=n_mask[None, :], other=0.0)
            w = w.to(tl.float32)
        else:
            if ROW_GROUPS:
                if HAS_GIDX:
                    g = tl.load(gidx_ptr + k, mask=k_mask, other=0)
                else:
                    g = k // group_size
                sz = g.to(tl.int64)[:, None] * N + offs_n[None, :]
                sz_mask = k_mask[:, None] & n_mask[None, :]
            else:
                sz = (start // group_size) * N + offs_n[None, :]
                sz_mask = n_mask[None, :]
            s = tl.load(s_ptr + sz, mask=sz_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz, mask=sz_mask, other=0.0).to(tl.float32)
            w = (q.to(tl.float32) - z) * s
        acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)
    mask = m_mask[:, None] & n_mask[None, :]
    if PARTIAL:
        base = out_ptr + split.to(tl.int64) * M * N
        tl.store(base + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)
    else:
        y = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y, mask=mask)


def _blocks(m: int, bits: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): skinny tiles for decode rows."""
    if m <= 16:
        return 16, 64, 128, 4
    if m <= 64:
        return 64, 64, 64, 4
    return 128, 128, 64, 8


def _num_splits(m_blocks: int, n_blocks: int, k_chunks: int, num_sms: int) -> int:
    """About four programs per SM, each at least four K chunks."""
    wanted = tu.cdiv(4 * num_sms, m_blocks * n_blocks)
    return max(1, min(wanted, k_chunks // 4))


def quant_gemm(
    x: torch.Tensor,  # [M, K], last dim contiguous
    qweight: torch.Tensor,  # [K // (32/bits), N] int32 contiguous
    bits: int,
    group_size: int,  # rows per group (K for one group per column)
    scales: torch.Tensor | None = None,  # [G, N]
    zeros: torch.Tensor | None = None,  # [G, N] float
    g_idx: torch.Tensor | None = None,  # [K] int32 group of each row
    lookup_table: torch.Tensor | None = None,  # [N, 16]
    num_splits: int | None = None,
    blocks: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:  # [M, N] in x.dtype
    _check(x, qweight, bits)
    m, k = x.shape
    n = qweight.shape[1]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    block_m, block_n, block_k, warps = blocks or _blocks(m, bits)
    k_chunks = tu.cdiv(k, block_k)
    grid_mn = (tu.cdiv(m, block_m), tu.cdiv(n, block_n))
    if num_splits is None:
        num_splits = _num_splits(*grid_mn, k_chunks, tu.num_sms(x.device))
    chunks = tu.cdiv(k_chunks, num_splits)
    splits = tu.cdiv(k_chunks, chunks)
    target = (
        out if splits == 1 else torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    )
    lut = lookup_table is not None
    row_groups = g_idx is not None or group_size % block_k != 0
    tu.launch(
        _quant_gemm_kernel,
        (*grid_mn, splits),
        x.device,
        x,
        qweight,
        scales if scales is not None else qweight,
        zeros if zeros is not None else qweight,
        g_idx if g_idx is not None else qweight,
        lookup_table if lut else qweight,
        target,
        m,
        n,
        k,
        x.stride(0),
        group_size,
        chunks,
        BITS=bits,
        LUT=lut,
        HAS_GIDX=g_idx is not None,
        ROW_GROUPS=row_groups,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        PARTIAL=splits > 1,
        DOT_PRECISION=tu.dot_precision(x.dtype),
        num_warps=warps,
        num_stages=3,
    )
    if splits > 1:
        out.copy_(target.sum(dim=0))
    return out


def _check(x: torch.Tensor, qweight: torch.Tensor, bits: int) -> None:
    tu.check_ndim("x", x, 2)
    tu.check_ndim("qweight", qweight, 2)
    tu.check_dtype("x", x, tu.FLOAT_DTYPES)
    if qweight.dtype != torch.int32 or bits not in (4, 8):
        raise ValueError(f"qweight must be int32 packing 4- or 8-bit codes, got {qweight.dtype}")
    if qweight.shape[0] * (32 // bits) != x.shape[1]:
        raise ValueError(f"qweight shape {tuple(qweight.shape)} does not match x {tuple(x.shape)}")
    tu.check_last_dim_contiguous("x", x)
    tu.check_contiguous("qweight", qweight)
    tu.check_same_device(("x", x), ("qweight", qweight))
