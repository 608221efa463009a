"""y = x @ W^T for 1..4 rows (decode) and K-packed integer weights (int_packing.py): a
second GEMV beside triton_quant_gemv.py, laid out for HBM bandwidth rather than
few programs. Torch reference: int_packing.packed_matmul_ref.

- Many programs, short K ranges: split-K aims at `per_sm` (8..32) programs per SM, so
  each program reads a few [BLOCK_K / p, BLOCK_N] blocks of packed words (rows of N
  contiguous int32, 16-byte loads) and many loads are in flight per SM.
- A K tile of BLOCK_K rows is SUB_K-row sub-tiles unrolled at compile time (SUB_K =
  min(BLOCK_K, group size)): each sub-tile lies in one group, so its scales and zeros
  are one [BLOCK_N] load each, and the sub-tiles' loads are independent.
- Three instructions per code (shift, LOP3, FMA): code q goes to the top mantissa bits
  of 1.0f, f = 1 + q / 2^bits exactly, and with the x sum of the word row

      sum_j x_j (q_j - z) s = s 2^bits sum_j x_j f_j - (z + 2^bits) s sum_j x_j

  (triton_quant_gemv subtracts the 2^23 of its magic number once per code: four).
  f is exact and the added 2^bits s sum_j x_j cancels once per word row: the float32
  error matches triton_quant_gemv's (K=4096, 8-bit: <= 7e-5 on outputs up to 400).
- Split-K partial sums [S, M, N] float32 are added in one launch: each program stores
  its partial, then bumps a per-tile counter (acq_rel, gpu scope, after a CTA barrier);
  the program that arrives last adds the S partials in split order (deterministic, the
  same bits on every run) and resets the counter to 0 for the next launch. No second
  kernel, no zeroed output, no float atomics.

    grid = (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), S)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu
from pagedllm.layers.quantization import kernel_table

SPLITS_CAP = 32  # split-K factor cap: the last program loads all partials at once
MAX_SPLITS = tl.constexpr(SPLITS_CAP)
MIN_COUNTERS = 1 << 16  # tile counters kept per device (256 KiB; grown if ever needed)
_COUNTERS: dict[torch.device, torch.Tensor] = {}


@triton.jit
def _row_fma(part, x_sum, f, x_ptr, row, M, stride_xm, k, r_mask):
    """One activation row: part [KW, BLOCK_N] += x_row[k] * f, x_sum [KW] += x_row[k]."""
    x = tl.load(x_ptr + row * stride_xm + k, mask=r_mask & (row < M), other=0.0).to(tl.float32)
    return part + x[:, None] * f, x_sum + x


@triton.jit
def _sub_tile(
    acc, x_ptr, qw_ptr, s_ptr, z_ptr, m0, M, offs_n, n_mask, k0, hi, N, stride_xm, group_size,
    BITS: tl.constexpr, BLOCK_M: tl.constexpr, SUB_K: tl.constexpr,
):  # fmt: skip
    """acc (4 rows' [SUB_K / p, BLOCK_N] sums; rows >= BLOCK_M unused) + the products of
    weight rows k0..k0+SUB_K (one group). 2D tensors only, one accumulator per row: the
    blocks keep the coalesced weight load's layout (16-byte words; a 3D [M, KW, N]
    product made Triton convert them through shared memory, 255 registers, spills)."""
    PACK: tl.constexpr = 32 // BITS
    MANT: tl.constexpr = ((1 << BITS) - 1) << (23 - BITS)  # the code's mantissa bits
    rows = k0 // PACK + tl.arange(0, SUB_K // PACK)
    r_mask = rows < hi // PACK
    words = tl.load(
        qw_ptr + rows.to(tl.int64)[:, None] * N + offs_n[None, :],
        mask=r_mask[:, None] & n_mask[None, :],
        other=0,
    )
    sz = (k0 // group_size).to(tl.int64) * N + offs_n
    s = tl.load(s_ptr + sz, mask=n_mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + sz, mask=n_mask, other=0.0).to(tl.float32)
    s_hi = (s * (1 << BITS))[None, :]
    zs = ((z + (1 << BITS)) * s)[None, :]
    a0, a1, a2, a3 = acc
    p0 = tl.zeros(words.shape, dtype=tl.float32)
    p1, p2, p3 = p0, p0, p0
    x0 = tl.zeros([SUB_K // PACK], dtype=tl.float32)
    x1, x2, x3 = x0, x0, x0
    for j in tl.static_range(PACK):
        if (23 - BITS) - BITS * j >= 0:
            moved = words << ((23 - BITS) - BITS * j)
        else:
            moved = words >> (BITS * j - (23 - BITS))
        f = ((moved & MANT) | 0x3F800000).to(tl.float32, bitcast=True)  # 1 + q / 2^BITS
        k = rows * PACK + j
        p0, x0 = _row_fma(p0, x0, f, x_ptr, m0, M, stride_xm, k, r_mask)
        if BLOCK_M > 1:
            p1, x1 = _row_fma(p1, x1, f, x_ptr, m0 + 1, M, stride_xm, k, r_mask)
        if BLOCK_M > 2:
            p2, x2 = _row_fma(p2, x2, f, x_ptr, m0 + 2, M, stride_xm, k, r_mask)
            p3, x3 = _row_fma(p3, x3, f, x_ptr, m0 + 3, M, stride_xm, k, r_mask)
    a0 += p0 * s_hi - x0[:, None] * zs
    if BLOCK_M > 1:
        a1 += p1 * s_hi - x1[:, None] * zs
    if BLOCK_M > 2:
        a2 += p2 * s_hi - x2[:, None] * zs
        a3 += p3 * s_hi - x3[:, None] * zs
    return a0, a1, a2, a3


@triton.jit(do_not_specialize=["M", "chunks_per_split"])  # see triton_utils
def _quant_gemv_wide_kernel(
    x_ptr,  # [M, K], row stride stride_xm, last dim contiguous
    qw_ptr,  # [K // PACK, N] int32 contiguous
    s_ptr,  # [G, N] scales, contiguous
    z_ptr,  # [G, N] float zero points, contiguous
    part_ptr,  # [S, M, N] float32 partial sums (unused when S == 1)
    out_ptr,  # [M, N] in x.dtype
    cnt_ptr,  # int32 tile counters, all 0 between launches
    M,
    N,
    K,
    stride_xm,
    group_size,
    chunks_per_split,
    BITS: tl.constexpr,
    BLOCK_M: tl.constexpr,  # 1, 2 or 4 rows
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SUB_K: tl.constexpr,  # divides BLOCK_K and the group size
    PARTIAL: tl.constexpr,  # S > 1
    NUM_STAGES: tl.constexpr,
):
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    m0 = pid_m * BLOCK_M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    lo = split * chunks_per_split * BLOCK_K
    hi = tl.minimum(lo + chunks_per_split * BLOCK_K, K)
    zero = tl.zeros([SUB_K // (32 // BITS), BLOCK_N], dtype=tl.float32)
    acc = (zero, zero, zero, zero)
    for start in tl.range(lo, hi, BLOCK_K, num_stages=NUM_STAGES):
        for sub in tl.static_range(BLOCK_K // SUB_K):
            acc = _sub_tile(
                acc, x_ptr, qw_ptr, s_ptr, z_ptr, m0, M, offs_n, n_mask, start + sub * SUB_K,
                hi, N, stride_xm, group_size, BITS, BLOCK_M, SUB_K,
            )  # fmt: skip
    for i in tl.static_range(BLOCK_M):
        row = m0 + i
        y = tl.sum(acc[i], axis=0)
        if PARTIAL:  # S * M * N < 2^31
            tl.store(part_ptr + (split * M + row) * N + offs_n, y, mask=n_mask & (row < M))
        else:
            tl.store(
                out_ptr + row * N + offs_n,
                y.to(out_ptr.dtype.element_ty),
                mask=n_mask & (row < M),
            )
    if PARTIAL:
        _reduce_splits(part_ptr, out_ptr, cnt_ptr, m0, M, N, offs_n, n_mask, BLOCK_M, MAX_SPLITS)


@triton.jit
def _reduce_splits(
    part_ptr, out_ptr, cnt_ptr, m0, M, N, offs_n, n_mask,
    BLOCK_M: tl.constexpr, MAX_SPLITS: tl.constexpr,
):  # fmt: skip
    """After this split's partial: the tile's last program adds all S partials, loaded
    at once as [MAX_SPLITS, BLOCK_N] (rows >= S masked, no traffic; no chain of S
    dependent loads) and summed by tl.sum, in an order fixed at compile time."""
    splits = tl.num_programs(2)
    tl.debug_barrier()  # every thread's store before the (one-thread) release below
    counter = cnt_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
    if arrived == splits - 1:
        offs_s = tl.arange(0, MAX_SPLITS)
        for i in tl.static_range(BLOCK_M):
            row = m0 + i
            mask = n_mask & (row < M)
            parts = tl.load(
                part_ptr + (offs_s[:, None] * M + row) * N + offs_n[None, :],
                mask=(offs_s < splits)[:, None] & mask[None, :],
                other=0.0,
                cache_modifier=".cg",
            )
            total = tl.sum(parts, axis=0)
            tl.store(out_ptr + row * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")


def counters(device: torch.device, needed: int) -> torch.Tensor:
    """The device's tile counters (zeros; every launch leaves them zero). Allocated on the
    first call, which the warm-up makes before any CUDA graph capture."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < needed:
        buf = torch.zeros(max(needed, MIN_COUNTERS), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def k_tiles(block_k: int, group_size: int, bits: int) -> tuple[int, int] | None:
    """(BLOCK_K, SUB_K): the K tile and its one-group sub-tile; None when no power-of-two
    tile of at least 4 word rows fits the group size (the caller falls back)."""
    least = 4 * (32 // bits)
    while block_k >= least:
        if group_size % block_k == 0:
            return block_k, block_k
        if block_k % group_size == 0:
            return block_k, group_size
        block_k //= 2
    return None


def supports(group_size: int, bits: int) -> bool:
    return k_tiles(kernel_table.INT_GEMV_WIDE_TILES[1][2], group_size, bits) is not None


def quant_gemv_wide(
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
    tile = kernel_table.pick(kernel_table.INT_GEMV_WIDE_TILES, m)
    block_m, block_n, block_k, warps = blocks or tile[:4]
    block_m = min(block_m, tu.next_power_of_2(m), 4)
    ks = k_tiles(block_k, group_size, bits)
    if ks is None:
        raise ValueError(f"group size {group_size} has no power-of-two K tile")
    block_k, sub_k = ks
    k_chunks = tu.cdiv(k, block_k)
    grid_mn = (tu.cdiv(m, block_m), tu.cdiv(n, block_n))
    if num_splits is None:
        sms = tu.num_sms(x.device)
        num_splits = kernel_table.num_splits(
            grid_mn[0] * grid_mn[1], k_chunks, per_sm or tile[4], sms, min_chunks=1
        )
    num_splits = min(num_splits, SPLITS_CAP)
    chunks = tu.cdiv(k_chunks, num_splits)
    splits = tu.cdiv(k_chunks, chunks)
    part = out if splits == 1 else torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    stages = stages or kernel_table.INT_GEMV_WIDE_STAGES
    tu.launch(
        _quant_gemv_wide_kernel,
        (*grid_mn, splits),
        x.device,
        x, qweight, scales, zeros, part, out, counters(x.device, grid_mn[0] * grid_mn[1]),
        m, n, k, x.stride(0), group_size, chunks,
        BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SUB_K=sub_k,
        PARTIAL=splits > 1, NUM_STAGES=stages, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out
