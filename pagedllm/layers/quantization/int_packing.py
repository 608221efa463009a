"""Packed integer weights: unpacking of the checkpoint layouts and the common layout
that the GPU kernel and the CPU path read, with its torch references (the dequantizer
and the product through it) of the Triton kernels triton_quant_{dequant,gemm,gemv}.py.

Checkpoint layouts (W is [out, in] = [N, K]; codes q are unsigned `bits`-bit ints):

    AWQ   qweight [K, N/8] int32: word j of row k holds columns 8j..8j+7, column
          8j+c in nibble AWQ_ORDER.index(c) (AWQ's interleave [0, 2, 4, 6, 1, 3, 5, 7]);
          qzeros [K/g, N/8] packed the same way; scales [K/g, N]. W = (q - z) * s.
    GPTQ  qweight [K*bits/32, N] int32: word r holds rows r*p..r*p+p-1 (p = 32/bits),
          row r*p+i at bit i*bits; qzeros [G, N*bits/32] packed the same way along N;
          scales [G, N]; g_idx [K] the group of each row. W = (q - z) * s.
    SqueezeLLM  qweight as GPTQ 4-bit; lookup_table [N, 16]: W[n, k] = lut[n, q].

Common ("K-packed") layout after loading: qweight [K/p, N] int32 as GPTQ's, rows in
the order the kernel reads (x is permuted to match when act-order sorted them);
scales [G, N] and zeros [G, N] (float, unpacked) or a lookup table.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column AWQ_ORDER[i]


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[K/p, N] int32 -> [K, N] int32 codes (row r*p+i from bits i*bits of word r)."""
    pack = 32 // bits
    shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)
    codes = (packed[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
    return codes.reshape(packed.shape[0] * pack, packed.shape[1])


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of unpack_rows: [K, N] codes -> [K/p, N] int32."""
    pack = 32 // bits
    k, n = codes.shape
    grouped = codes.to(torch.int64).reshape(k // pack, pack, n)
    shifts = torch.arange(0, 32, bits, device=codes.device, dtype=torch.int64)
    words = (grouped << shifts[None, :, None]).sum(dim=1)
    return _to_int32(words)


def unpack_cols(
    packed: torch.Tensor, bits: int, order: tuple[int, ...] | None = None
) -> torch.Tensor:
    """[R, N/p] int32 -> [R, N] codes; column p*j+c of word j sits in slot
    order.index(c) (sequential when `order` is None)."""
    pack = 32 // bits
    shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)
    slots = (packed[:, :, None] >> shifts[None, None, :]) & ((1 << bits) - 1)
    if order is not None:
        slots = slots[:, :, [order.index(c) for c in range(pack)]]
    return slots.reshape(packed.shape[0], packed.shape[1] * pack)


def pack_cols(codes: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverse of unpack_cols: [R, N] codes -> [R, N/p] int32."""
    pack = 32 // bits
    r, n = codes.shape
    grouped = codes.to(torch.int64).reshape(r, n // pack, pack)
    if order is not None:
        grouped = grouped[:, :, list(order)]
    shifts = torch.arange(0, 32, bits, device=codes.device, dtype=torch.int64)
    return _to_int32((grouped << shifts[None, None, :]).sum(dim=2))


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2^32) -> the same bits as int32."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def dequantize_ref(
    qweight: torch.Tensor,  # [K/p, N] int32, K-packed
    bits: int,
    scales: torch.Tensor | None,  # [G, N]
    zeros: torch.Tensor | None,  # [G, N] float
    group_rows: torch.Tensor | None,  # [K] int group of each row (None: k // group_size)
    group_size: int,
    lookup_table: torch.Tensor | None = None,  # [N, 16]
) -> torch.Tensor:
    """W^T [K, N] float32 of the common layout (the torch reference)."""
    codes = unpack_rows(qweight, bits)
    if lookup_table is not None:
        cols = torch.arange(codes.shape[1], device=codes.device)
        return lookup_table.float()[cols[None, :], codes.long()]
    assert scales is not None and zeros is not None
    k = codes.shape[0]
    if group_rows is None:
        group_rows = torch.arange(k, device=codes.device) // group_size
    rows = group_rows.long()
    return (codes.float() - zeros.float()[rows]) * scales.float()[rows]


def packed_matmul_ref(
    x: torch.Tensor,  # [M, K]
    qweight: torch.Tensor,  # [K/p, N] int32, K-packed
    bits: int,
    group_size: int,
    scales: torch.Tensor | None = None,  # [G, N]
    zeros: torch.Tensor | None = None,  # [G, N] float
    g_idx: torch.Tensor | None = None,  # [K] int group of each row
    lookup_table: torch.Tensor | None = None,  # [N, 16]
) -> torch.Tensor:  # [M, N] in x.dtype
    """y = x @ W^T (quant_gemm's and quant_gemv's arguments): W dequantized and rounded to
    x.dtype, the product in float32 and rounded once (the torch reference)."""
    w = dequantize_ref(qweight, bits, scales, zeros, g_idx, group_size, lookup_table)
    return (x.float() @ w.to(x.dtype).float()).to(x.dtype)
