"""y = x @ W^T for few rows (decode) and K-packed integer weights (int_packing.py),
without tensor cores and without unpacking a tile into one [BLOCK_K, BLOCK_N] block.

Word row r of a tile holds weight rows r*p + j (p = 32 / bits, j = 0..p-1) at bits
j*bits. Instead of reshaping the unpacked codes, the kernel walks j: codes
(words >> j*bits) & mask are a [BLOCK_K/p, BLOCK_N] block that multiplies the x
entries r*p + j (a strided load, cached). Within a word row the group is constant,
so scale and zero point come out of the sum over j:

    sum_j x_j (q_jn - z_n) s_n = s_n * (sum_j x_j q_jn - z_n * sum_j x_j)

The codes become floats without an int-to-float conversion (quarter rate on Hopper):
q | 0x4B000000 read as a float32 is 2^23 + q, exact, so one OR (fused with the mask
into one LOP3) and one subtraction. Products accumulate in a [BLOCK_M, BLOCK_K/p,
BLOCK_N] register block that is reduced over K once at the end, not once per j.
Torch reference: int_packing.packed_matmul_ref.

    grid = (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), S)   S > 1: split-K, float32 partial
    sums [S, M, N] added in order by _sum_splits_kernel (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu
from pagedllm.layers.quantization import kernel_table

MAGIC_F32 = 8388608.0  # 2^23: float32 bits 0x4B000000 | q  ==  2^23 + q


@triton.jit(do_not_specialize=["M", "chunks_per_split"])  # see triton_utils
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
    NUM_STAGES: tl.constexpr,  # loads prefetched ahead (a loop without tl.dot needs tl.range's)
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
    acc = tl.zeros([BLOCK_M, KW, BLOCK_N], dtype=tl.float32)
    for start in tl.range(lo, hi, BLOCK_K, num_stages=NUM_STAGES):
        rows = start // PACK + offs_r
        r_mask = rows < hi // PACK
        words = tl.load(
            qw_ptr + rows.to(tl.int64)[:, None] * N + offs_n[None, :],
            mask=r_mask[:, None] & n_mask[None, :],
            other=0,
        )
        if ONE_GROUP:
            sz = (start // group_size) * N + offs_n[None, :]  # [1, BLOCK_N]
            sz_mask = n_mask[None, :]
        else:
            sz = ((rows * PACK) // group_size).to(tl.int64)[:, None] * N + offs_n[None, :]
            sz_mask = r_mask[:, None] & n_mask[None, :]
        s = tl.load(s_ptr + sz, mask=sz_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + sz, mask=sz_mask, other=0.0).to(tl.float32)
        part = tl.zeros([BLOCK_M, KW, BLOCK_N], dtype=tl.float32)
        x_sum = tl.zeros([BLOCK_M, KW], dtype=tl.float32)
        for j in tl.static_range(PACK):
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + (rows * PACK + j)[None, :],
                mask=m_mask[:, None] & r_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            bits = ((words >> (j * BITS)) & ((1 << BITS) - 1)) | 0x4B000000
            q = bits.to(tl.float32, bitcast=True) - 8388608.0
            part += x[:, :, None] * q[None, :, :]
            x_sum += x
        acc += (part - x_sum[:, :, None] * z[None, :, :]) * s[None, :, :]
    y = tl.sum(acc, axis=1)
    mask = m_mask[:, None] & n_mask[None, :]
    if PARTIAL:
        base = out_ptr + split.to(tl.int64) * M * N
        tl.store(base + offs_m[:, None] * N + offs_n[None, :], y, mask=mask)
    else:
        tl.store(
            out_ptr + offs_m[:, None] * N + offs_n[None, :],
            y.to(out_ptr.dtype.element_ty),
            mask=mask,
        )


@triton.jit(do_not_specialize=["total", "splits"])
def _sum_splits_kernel(part_ptr, out_ptr, total, splits, BLOCK: tl.constexpr):
    """out[i] = sum_s part[s, i] in order (float32), cast to out's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(splits):
        acc += tl.load(part_ptr + s * total + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def sum_splits(part: torch.Tensor, out: torch.Tensor) -> None:
    """out <- part.sum(0) for float32 partial sums [S, M, N] (one kernel, deterministic)."""
    total = out.numel()
    block = 1024
    tu.launch(
        _sum_splits_kernel,
        (tu.cdiv(total, block),),
        out.device,
        part,
        out,
        total,
        part.shape[0],
        BLOCK=block,
        num_warps=4,
    )


def split_target(out: torch.Tensor, splits: int) -> torch.Tensor:
    if splits == 1:
        return out
    return torch.empty((splits, *out.shape), dtype=torch.float32, device=out.device)


def quant_gemv(
    x: torch.Tensor,  # [M, K], last dim contiguous, M small
    qweight: torch.Tensor,  # [K // (32/bits), N] int32 contiguous
    bits: int,
    group_size: int,
    scales: torch.Tensor,  # [G, N]
    zeros: torch.Tensor,  # [G, N] float
    num_splits: int | None = None,
    blocks: tuple[int, int, int, int] | None = None,
    per_sm: int | None = None,
    stages: int | None = None,
) -> torch.Tensor:  # [M, N] in x.dtype
    m, k = x.shape
    n = qweight.shape[1]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    tile = kernel_table.pick(kernel_table.INT_GEMV_TILES, m)
    block_m, block_n, block_k, warps = blocks or tile[:4]
    per_sm = per_sm or tile[4]
    block_m = min(block_m, tu.next_power_of_2(m))
    while group_size % block_k and block_k > 32 * 8 // bits:
        block_k //= 2
    k_chunks = tu.cdiv(k, block_k)
    grid_mn = (tu.cdiv(m, block_m), tu.cdiv(n, block_n))
    if num_splits is None:
        sms = tu.num_sms(x.device)
        num_splits = kernel_table.num_splits(grid_mn[0] * grid_mn[1], k_chunks, per_sm, sms)
    chunks = tu.cdiv(k_chunks, num_splits)
    splits = tu.cdiv(k_chunks, chunks)
    target = split_target(out, splits)
    stages = stages or kernel_table.INT_GEMV_STAGES
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
        NUM_STAGES=stages,
        num_warps=warps,
        num_stages=stages,
    )
    if splits > 1:
        sum_splits(target, out)
    return out
