"""y = x @ W^T for weights in the common K-packed layout (int_packing.py): the tile of
W is dequantized in registers ((q - z) * s, or a lookup table) and multiplied there.

    grid = (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), S)       program (m, n, s)
    rows    : x rows [m*BLOCK_M, ...), output columns [n*BLOCK_N, ...)
    K range : [s*L, min((s+1)*L, K)) with L = chunks_per_split * BLOCK_K
S > 1 (split-K, for decode's few rows) writes float32 partial sums to part [S, M, N],
added in order afterwards (deterministic). BLOCK_K is a multiple of the pack factor,
so a tile starts at a word boundary: its words [BLOCK_K/p, BLOCK_N] are loaded once.

When a tile lies in one group (the common AWQ/GPTQ case, no lookup table, no g_idx)
the codes at bits j*bits of the word rows meet the x columns r*p + j: one tl.dot per
code slot j (BLOCK_K/p >= 16), codes turned into 16-bit floats by bit tricks
(_codes_to_float), and scale and zero point applied after the dots:
s * (x . q - z * sum x). Otherwise the codes are unpacked by broadcasting shifts
([BLOCK_K/p, p, BLOCK_N] -> [BLOCK_K, BLOCK_N]) and dequantized per row.
Torch reference: int_packing.packed_matmul_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu
from pagedllm.layers.kernels.triton_quant_gemv import split_target, sum_splits
from pagedllm.layers.kernels.triton_quant_tiles import nibble_dots, unpacked_dot
from pagedllm.layers.quantization import kernel_table


@triton.jit(do_not_specialize=["M", "chunks_per_split"])  # see triton_utils
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
    NIBBLE_DOTS: tl.constexpr,  # one group per tile, no LUT: a tl.dot per code slot
    OFFSET: tl.constexpr,  # 1024 / 128: codes -> float16 / bfloat16 by bit tricks; else 0
):
    PACK: tl.constexpr = 32 // BITS
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_K // PACK)
    m_mask, n_mask = offs_m < M, offs_n < N
    lo = split * chunks_per_split * BLOCK_K
    hi = tl.minimum(lo + chunks_per_split * BLOCK_K, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_K):
        words_row = start // PACK + offs_w
        w_mask = words_row < hi // PACK
        words = tl.load(
            qw_ptr + words_row.to(tl.int64)[:, None] * N + offs_n[None, :],
            mask=w_mask[:, None] & n_mask[None, :],
            other=0,
        )
        if NIBBLE_DOTS:
            acc += nibble_dots(
                x_ptr,
                s_ptr,
                z_ptr,
                words,
                words_row,
                w_mask,
                offs_m,
                offs_n,
                m_mask,
                n_mask,
                N,
                stride_xm,
                start // group_size,
                BITS,
                BLOCK_M,
                BLOCK_N,
                OFFSET,
                DOT_PRECISION,
            )
        else:
            acc += unpacked_dot(
                x_ptr,
                s_ptr,
                z_ptr,
                gidx_ptr,
                lut_ptr,
                words,
                start,
                hi,
                offs_m,
                offs_n,
                m_mask,
                n_mask,
                N,
                stride_xm,
                group_size,
                BITS,
                LUT,
                HAS_GIDX,
                ROW_GROUPS,
                BLOCK_K,
                BLOCK_N,
                DOT_PRECISION,
            )
    mask = m_mask[:, None] & n_mask[None, :]
    if PARTIAL:
        base = out_ptr + split.to(tl.int64) * M * N
        tl.store(base + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)
    else:
        y = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y, mask=mask)


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
    per_sm: int | None = None,
    stages: int | None = None,
    half_magic: bool = True,
) -> torch.Tensor:  # [M, N] in x.dtype
    _check(x, qweight, bits)
    m, k = x.shape
    n = qweight.shape[1]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    tile = kernel_table.pick(kernel_table.INT_GEMM_TILES, m)
    block_m, block_n, block_k, warps = blocks or tile[:4]
    per_sm = per_sm or tile[4]
    lut = lookup_table is not None
    nibble = not lut and g_idx is None and group_size % block_k == 0
    if nibble and block_k < 16 * (32 // bits):  # tl.dot needs K >= 16 per code slot
        nibble = False
    if not nibble and blocks is None:
        # The unpacked path holds a [BLOCK_K, BLOCK_N] tile of codes, scales and zeros per
        # stage: the sweep's 64/128 x 256 tiles (picked for the nibble path) need 246-279 KB
        # of shared memory there, over the H200's 227 KB.
        block_n = min(block_n, 128)
        stages = stages or 2
    k_chunks = tu.cdiv(k, block_k)
    grid_mn = (tu.cdiv(m, block_m), tu.cdiv(n, block_n))
    if num_splits is None:
        num_splits = kernel_table.num_splits(
            grid_mn[0] * grid_mn[1],
            k_chunks,
            per_sm,
            tu.num_sms(x.device),
            min_chunks=4,
        )
    chunks = tu.cdiv(k_chunks, num_splits)
    splits = tu.cdiv(k_chunks, chunks)
    target = split_target(out, splits)
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
        NIBBLE_DOTS=nibble,
        OFFSET=code_offset(x.dtype, bits) if half_magic else 0.0,
        num_warps=warps,
        num_stages=stages or kernel_table.INT_GEMM_STAGES,
    )
    if splits > 1:
        sum_splits(target, out)
    return out


def code_offset(dtype: torch.dtype, bits: int) -> float:
    """The offset of the 16-bit codes of _codes_to_float (0.0: through float32)."""
    if dtype == torch.float16:
        return 1024.0
    return 128.0 if dtype == torch.bfloat16 and bits == 4 else 0.0


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
