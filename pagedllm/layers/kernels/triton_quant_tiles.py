"""The per-tile parts of triton_quant_gemm's kernel: one K tile of K-packed codes
[BLOCK_K/p, BLOCK_N] int32 words times x, returned as a float32 [BLOCK_M, BLOCK_N]
partial sum (see triton_quant_gemm for the two paths). Torch reference: that of
triton_quant_gemm (int_packing.packed_matmul_ref); tested through it."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _codes_to_float(words, j, BITS: tl.constexpr, DTYPE: tl.constexpr, OFFSET: tl.constexpr):
    """OFFSET + the codes at bits j*BITS of each word, as DTYPE, exactly and without
    int-to-float conversions (quarter rate on Hopper): 0x6400 | q is the float16
    1024 + q, 0x4300 | q the bfloat16 128 + q (q < 128); otherwise 0x4B000000 | q is
    the float32 2^23 + q, made q by a subtraction (OFFSET 0)."""
    q = (words >> (j * BITS)) & ((1 << BITS) - 1)
    if OFFSET == 1024.0:
        w = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
    elif OFFSET == 128.0:
        w = (q | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        w = ((q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0).to(DTYPE)
    return w


@triton.jit
def nibble_dots(
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
    group,
    BITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    OFFSET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One tile in one group: s * (sum_j x_j . q_j - z * sum x), x_j the x columns
    r*p + j that meet the codes at bits j*BITS of word row r (no reshape of codes).
    Codes carry OFFSET (1024 or 128 with 16-bit bit tricks), folded into z."""
    PACK: tl.constexpr = 32 // BITS
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    x_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for j in tl.static_range(PACK):
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + (words_row * PACK + j)[None, :],
            mask=m_mask[:, None] & w_mask[None, :],
            other=0.0,
        )
        q = _codes_to_float(words, j, BITS, DTYPE, OFFSET)
        part += tl.dot(x, q, input_precision=DOT_PRECISION)
        x_sum += tl.sum(x.to(tl.float32), axis=1)
    s = tl.load(s_ptr + group * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + group * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    return (part - x_sum[:, None] * (z[None, :] + OFFSET)) * s[None, :]


@triton.jit
def unpacked_dot(
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
    BITS: tl.constexpr,
    LUT: tl.constexpr,
    HAS_GIDX: tl.constexpr,
    ROW_GROUPS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The general tile: codes unpacked to [BLOCK_K, BLOCK_N], dequantized per row
    (lookup table, per-row groups), one dot."""
    PACK: tl.constexpr = 32 // BITS
    k = start + tl.arange(0, BLOCK_K)
    k_mask = k < hi
    x = tl.load(
        x_ptr + offs_m[:, None] * stride_xm + k[None, :],
        mask=m_mask[:, None] & k_mask[None, :],
        other=0.0,
    )
    shifts = tl.arange(0, PACK) * BITS
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
    return tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)
