"""y = x @ W^T for few rows (decode) and K-packed integer weights (int_packing.py),
without tensor cores and without unpacking a tile into one [BLOCK_K, BLOCK_N] block.

Word row r of a tile holds weight rows r*p + j (p = 32 / bits, j = 0..p-1) at bits
j*bits. Instead of reshaping the unpacked codes, the kernel walks j: codes
(words >> j*bits) & mask are a [BLOCK_K/p, BLOCK_N] block that multiplies the x
entries r*p + j (a strided load, cached). With one quantization group per tile the
scale and zero point come out of the sum:

    sum_k x_k (q_kn - z_n) s_n = s_n * (sum_k x_k q_kn - z_n * sum_k x_k)

so the inner loop is shift, mask, convert, multiply-add. Torch reference:
int_packing.dequantize_ref.

    grid = (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), S)   S > 1: split-K, float32 partial
    sums [S, M, N] added in order afterwards (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers import triton_utils as tu


@triton.jit
def _quant_gemv_kernel(
    x_ptr,  # [M, K], row stride stride_xm, last dim contiguous
    qw_ptr,  # [K // PACK, N] int32 contiguous
    s_ptr,  # [G, N] scales, contiguous
    z_ptr,  # [G, N] float zero points, contiguous
    out_ptr,  # S == 1: y [M, N] in x.dtype; else part [S, M, N] float32
    M,
    N,
    K,
    stride_xm,
    group_size,
    chunks_per_split,
    BITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ONE_GROUP: tl.constexpr,  # every tile lies in one group (group_size % BLOCK_K == 0)
    PARTIAL: tl.constexpr,
):
    PACK: tl.constexpr = 32 // BITS
    KW: tl.constexpr = BLOCK_K // PACK
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, KW)
    m_mask, n_mask = offs_m < M, offs_n < N
    lo = split * chunks_per_split * BLOCK_K
    hi = tl.minimum(lo + chunks_per_split * BLOCK_K, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_K):
        rows = start // PACK + offs_r
        r_mask = rows < hi // PACK
        words = tl.load(
            qw_ptr + rows.to(tl.int64)[:, None] * N + offs_n[None, :],
            mask=r_mask[:, None] & n_mask[None, :],
            other=0,
        )
        if ONE_GROUP:
            g = start // group_size
            s = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            x_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        else:
            sz = ((rows * PACK) // group_size).to(tl.int64)[:, None] * N + offs_n[None, :]
            sz_mask = r_mask[:, None] & n_mask[None, :]
            s = tl.load(s_ptr + sz, mask=sz_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz, mask=sz_mask, other=0.0).to(tl.float32)
        for j in tl.static_range(PACK):
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + (rows * PACK + j)[None, :],
                mask=m_mask[:, None] & r_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            q = ((words >> (j * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
            if ONE_GROUP:
                part += tl.sum(x[:, :, None] * q[None, :, :], axis=1)
                x_sum += tl.sum(x, axis=1)
            else:
                acc += tl.sum(x[:, :, None] * ((q - z) * s)[None, :, :], axis=1)
        if ONE_GROUP:
            acc += s[None, :] * (part - x_sum[:, None] * z[None, :])
    mask = m_mask[:, None] & n_mask[None, :]
    if PARTIAL:
        base = out_ptr + split.to(tl.int64) * M * N
        tl.store(base + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)
    else:
        y = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y, mask=mask)


GEMV_MAX_ROWS = 8  # above this the tensor-core kernel (triton_quant_gemm) is faster


def _default_blocks(m: int, group_size: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps)."""
    block_k = 128 if group_size % 128 == 0 else 64
    return (1 if m == 1 else min(4, triton.next_power_of_2(m))), 128, block_k, 4


def quant_gemv(
    x: torch.Tensor,  # [M, K], last dim contiguous, M small
    qweight: torch.Tensor,  # [K // (32/bits), N] int32 contiguous
    bits: int,
    group_size: int,
    scales: torch.Tensor,  # [G, N]
    zeros: torch.Tensor,  # [G, N] float
    num_splits: int | None = None,
    blocks: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:  # [M, N] in x.dtype
    m, k = x.shape
    n = qweight.shape[1]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    block_m, block_n, block_k, warps = blocks or _default_blocks(m, group_size)
    k_chunks = tu.cdiv(k, block_k)
    grid_mn = (tu.cdiv(m, block_m), tu.cdiv(n, block_n))
    if num_splits is None:
        wanted = tu.cdiv(4 * tu.num_sms(x.device), grid_mn[0] * grid_mn[1])
        num_splits = max(1, min(wanted, k_chunks // 2))
    chunks = tu.cdiv(k_chunks, num_splits)
    splits = tu.cdiv(k_chunks, chunks)
    target = (
        out if splits == 1 else torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    )
    tu.launch(
        _quant_gemv_kernel,
        (*grid_mn, splits),
        x.device,
        x,
        qweight,
        scales,
        zeros,
        target,
        m,
        n,
        k,
        x.stride(0),
        group_size,
        chunks,
        BITS=bits,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        ONE_GROUP=group_size % block_k == 0,
        PARTIAL=splits > 1,
        num_warps=warps,
    )
    if splits > 1:
        out.copy_(target.sum(dim=0))
    return out
