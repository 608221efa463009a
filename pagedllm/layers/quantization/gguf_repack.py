"""GGUF weight blocks -> one packed layout that the CPU kernel reads (gguf_cpu_kernel.cpp).

    W[n, k] = scales[n, k // group] * q[n, k] + mins[n, k // 32]      (mins may be absent)

    bits 4: qweight uint8 [N, K/2]; in each 32-column block, byte j holds q[j] (low
            nibble) and q[j + 16] (high nibble): the Q4_0/Q4_1 block order
    bits 8: qweight int8 [N, K]

| GGUF type | block (bytes, weights)            | bits | group | scales        | mins          |
|-----------|-----------------------------------|------|-------|---------------|---------------|
| Q4_0      | d f16, qs[16]           (18, 32)  | 4    | 32    | d (f16)       | -8d (f16)     |
| Q4_1      | d, m f16, qs[16]        (20, 32)  | 4    | 32    | d (f16)       | m (f16)       |
| Q5_0      | d, qh u32, qs[16]       (22, 32)  | 8    | 32    | d, q - 16     | -             |
| Q5_1      | d, m, qh u32, qs[16]    (24, 32)  | 8    | 32    | d (f16)       | m (f16)       |
| Q8_0      | d, qs i8[32]            (34, 32)  | 8    | 32    | d (f16)       | -             |
| Q4_K      | d, dmin, sc[12], qs[128] (144, 256)| 4   | 32    | d*sc (f32)    | -dmin*m (f32) |
| Q5_K      | + qh[32]                (176, 256)| 8    | 32    | d*sc (f32)    | -dmin*m (f32) |
| Q6_K      | ql[128], qh[64], sc i8[16], d (210, 256) | 8 | 16 | d*sc (f32), q - 32 | -        |

Scales of the plain types stay float16 as in the file (-8d is exact in f16); the
K-quants' products d*sc need float32 (11 + 6 bits) to stay exact. Every function takes
`raw` uint8 [N, row_bytes] (one weight row per tensor row) and works in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.layers.quantization.gguf_types import (
    BLOCK_SIZES,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
)


@dataclass
class PackedGGUF:
    qweight: torch.Tensor  # uint8 [N, K/2] (bits 4) | int8 [N, K] (bits 8)
    scales: torch.Tensor  # float16 | float32 [N, K / group]
    mins: torch.Tensor | None  # same dtype [N, K / 32]
    bits: int
    group: int

    @property
    def shape(self) -> tuple[int, int]:
        n, width = self.qweight.shape
        return n, width * 2 if self.bits == 4 else width


def _blocks(raw: torch.Tensor, qtype: int) -> torch.Tensor:
    """[N, row_bytes] -> [N, blocks per row, bytes per block]."""
    block_bytes = BLOCK_SIZES[qtype][1]
    return raw.reshape(raw.shape[0], -1, block_bytes)


def _f16(b: torch.Tensor, at: int) -> torch.Tensor:
    return b[..., at : at + 2].contiguous().view(torch.float16)[..., 0]


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[.., 16] bytes -> [.., 32] values: low nibbles then high nibbles."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _pack4(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 -> [N, K/2] uint8 in the Q4_0 block order."""
    q = q.to(torch.uint8).reshape(q.shape[0], -1, 2, 16)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(q.shape[0], -1)


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1: u32 [.., 4 bytes] -> the fifth bit of each of the 32 values."""
    word = qh.contiguous().view(torch.int32)[..., 0:1]
    return ((word >> torch.arange(32, dtype=torch.int32)) & 1).to(torch.uint8)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).contiguous()


def _legacy(raw: torch.Tensor, qtype: int) -> PackedGGUF:
    b = _blocks(raw, qtype)
    d = _f16(b, 0)
    if qtype == Q8_0:
        return PackedGGUF(_flat(b[..., 2:].view(torch.int8)), d.contiguous(), None, 8, 32)
    has_min = qtype in (Q4_1, Q5_1)
    m = _f16(b, 2) if has_min else None
    start = 4 if has_min else 2
    if qtype in (Q4_0, Q4_1):
        mins = m if m is not None else d * -8
        return PackedGGUF(
            _flat(b[..., start : start + 16]), d.contiguous(), mins.contiguous(), 4, 32
        )
    q = _nibbles(b[..., start + 4 : start + 20]) | (_high_bits(b[..., start : start + 4]) << 4)
    q8 = q.to(torch.int8) if has_min else (q.to(torch.int16) - 16).to(torch.int8)
    return PackedGGUF(_flat(q8), d.contiguous(), None if m is None else m.contiguous(), 8, 32)


def _k_scales(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins (get_scale_min_k4)."""
    sc = sc.to(torch.int32)
    low_s, low_m = sc[..., 0:4] & 63, sc[..., 4:8] & 63
    high_s = (sc[..., 8:12] & 0x0F) | ((sc[..., 0:4] >> 6) << 4)
    high_m = (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)
    return torch.cat([low_s, high_s], -1), torch.cat([low_m, high_m], -1)


def _k4_values(qs: torch.Tensor) -> torch.Tensor:
    """[.., 128] bytes -> [.., 256]: per 64 values, 32 low nibbles then 32 high."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 32)
    return torch.cat([chunks & 0x0F, chunks >> 4], dim=-1).reshape(*qs.shape[:-1], 256)


def _k_quant_4_5(raw: torch.Tensor, qtype: int) -> PackedGGUF:
    b = _blocks(raw, qtype)
    d, dmin = _f16(b, 0).float(), _f16(b, 2).float()
    sc, m = _k_scales(b[..., 4:16])
    scales = _flat(d[..., None] * sc.float())
    mins = _flat(-(dmin[..., None] * m.float()))
    if qtype == Q4_K:
        return PackedGGUF(_pack4(_flat(_k4_values(b[..., 16:144]))), scales, mins, 4, 32)
    qh = b[..., 16:48].to(torch.int32)  # bit 2c / 2c+1 of qh[l]: 5th bit of chunk c
    bits = (qh[..., None, :] >> torch.arange(8, dtype=torch.int32)[:, None]) & 1  # [.., 8, 32]
    q = _k4_values(b[..., 48:176]).to(torch.int32) | (bits.reshape(*qh.shape[:-1], 256) << 4)
    return PackedGGUF(_flat(q.to(torch.int8)), scales, mins, 8, 32)


def _q6_k(raw: torch.Tensor) -> PackedGGUF:
    b = _blocks(raw, Q6_K)
    ql = b[..., 0:128].to(torch.int32).reshape(*b.shape[:-1], 2, 2, 32)  # [half, l // 32, l % 32]
    qh = b[..., 128:192].to(torch.int32).reshape(*b.shape[:-1], 2, 1, 32)
    low = torch.cat([ql & 0x0F, ql >> 4], dim=-2)  # [.., half, 4, 32]: quarters 0..3
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int32)[:, None]
    high = (qh >> shifts) & 3  # [.., half, 4, 32]
    q = (low | (high << 4)) - 32
    sc = b[..., 192:208].contiguous().view(torch.int8).float()
    d = _f16(b, 208).float()
    return PackedGGUF(_flat(q.to(torch.int8)), _flat(d[..., None] * sc), None, 8, 16)


def repack(raw: torch.Tensor, qtype: int) -> PackedGGUF:
    """GGUF blocks (uint8 [N, row_bytes], one weight row each) -> PackedGGUF."""
    if qtype in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0):
        return _legacy(raw, qtype)
    if qtype in (Q4_K, Q5_K):
        return _k_quant_4_5(raw, qtype)
    if qtype == Q6_K:
        return _q6_k(raw)
    raise ValueError(f"GGUF tensor type {qtype} cannot be kept quantized")


def dequantize(p: PackedGGUF) -> torch.Tensor:
    """The float32 [N, K] weight a PackedGGUF stands for (the kernels' reference)."""
    n, k = p.shape
    if p.bits == 4:
        qs = p.qweight.reshape(n, k // 32, 1, 16)
        q = torch.cat([qs & 0x0F, qs >> 4], dim=2).to(torch.float32)  # [N, K/32, 2, 16]
    else:
        q = p.qweight.to(torch.float32)
    w = q.reshape(n, -1, p.group) * p.scales.to(torch.float32).reshape(n, -1, 1)
    if p.mins is not None:
        w = w.reshape(n, -1, 32) + p.mins.to(torch.float32).reshape(n, -1, 1)
    return w.reshape(n, k)
