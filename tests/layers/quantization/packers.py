"""Test packers, written from the formats' public descriptions (AutoAWQ's GEMM
layout, AutoGPTQ's v1 layout, SqueezeLLM's dense LUT, vLLM's fp8 checkpoints), word
by word, independently of pagedllm's unpacking code. Each takes W [out, in] float32
and returns (checkpoint tensors, the dequantized W float32)."""

from __future__ import annotations

import torch

Packed = tuple[dict[str, torch.Tensor], torch.Tensor]
AWQ_ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: nibble i holds column 8j + map[i]


def _words(values: list[torch.Tensor], bits: int) -> torch.Tensor:
    """values[i] (int64 codes) in bits [i*bits, (i+1)*bits) of one int32 word."""
    word = torch.zeros_like(values[0], dtype=torch.int64)
    for i, v in enumerate(values):
        word |= v.to(torch.int64) << (i * bits)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def _affine(w: torch.Tensor, bits: int, sym: bool, min_zero: int) -> tuple[torch.Tensor, ...]:
    """Codes, scales, zeros of a group w [rows, out] (min/max per column)."""
    maxq = 2**bits - 1
    lo, hi = w.amin(dim=0).clamp(max=0), w.amax(dim=0).clamp(min=0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    scale = ((hi - lo) / maxq).clamp(min=1e-8).half().float()
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale)
    zero = zero.clamp(min_zero, maxq)
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return q.long(), scale, zero.long()


def pack_awq(weight: torch.Tensor, group: int) -> Packed:
    wt = weight.T.contiguous()  # [in, out]
    k, n = wt.shape
    q, s, z = torch.empty_like(wt, dtype=torch.long), [], []
    for g in range(k // group):
        rows = slice(g * group, (g + 1) * group)
        q[rows], scale, zero = _affine(wt[rows], 4, False, 0)
        s.append(scale)
        z.append(zero)
    scales, zeros = torch.stack(s), torch.stack(z)
    deq = (q - zeros.repeat_interleave(group, 0)) * scales.repeat_interleave(group, 0)

    def pack(codes: torch.Tensor) -> torch.Tensor:
        cols = [
            _words([codes[:, 8 * j + AWQ_ORDER_MAP[i]] for i in range(8)], 4) for j in range(n // 8)
        ]
        return torch.stack(cols, dim=1)

    tensors = {"qweight": pack(q), "qzeros": pack(zeros), "scales": scales.half()}
    return tensors, deq.T.contiguous()


def pack_gptq(weight: torch.Tensor, bits: int, group: int, desc_act: bool, sym: bool) -> Packed:
    wt = weight.T.contiguous()  # [in, out]
    k, n = wt.shape
    group = k if group == -1 else group
    pack = 32 // bits
    # Act order sorts rows by the Hessian of the layer input: q/k/v (and gate/up),
    # which share their input, share the order (one g_idx per fused layer).
    gen = torch.Generator().manual_seed(k)
    order = torch.randperm(k, generator=gen) if desc_act else torch.arange(k)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group).to(torch.int32)  # act order: the order'th rows
    q, s, z = torch.empty_like(wt, dtype=torch.long), [], []
    for g in range(k // group):
        rows = (g_idx == g).nonzero().flatten()
        q[rows], scale, zero = _affine(wt[rows], bits, sym, 1)  # v1 cannot store z = 0
        s.append(scale)
        z.append(zero)
    scales, zeros = torch.stack(s), torch.stack(z)
    deq = (q - zeros[g_idx.long()]) * scales[g_idx.long()]
    qweight = torch.stack(
        [_words([q[r * pack + i] for i in range(pack)], bits) for r in range(k // pack)]
    )
    stored = zeros - 1  # GPTQ v1: z - 1
    qzeros = torch.stack(
        [_words([stored[:, c * pack + i] for i in range(pack)], bits) for c in range(n // pack)],
        dim=1,
    )
    tensors = {"qweight": qweight, "qzeros": qzeros, "scales": scales.half(), "g_idx": g_idx}
    return tensors, deq.T.contiguous()


def pack_squeezellm(weight: torch.Tensor) -> Packed:
    n, k = weight.shape
    sorted_rows = weight.sort(dim=1).values
    picks = torch.linspace(0, k - 1, 16).round().long()
    lut = sorted_rows[:, picks].half()  # [out, 16]: 16 quantiles of each row
    q = (weight[:, :, None] - lut.float()[:, None, :]).abs().argmin(dim=2)  # [out, in]
    qt = q.T
    qweight = torch.stack([_words([qt[r * 8 + i] for i in range(8)], 4) for r in range(k // 8)])
    deq = lut.float().gather(1, q)
    return {"qweight": qweight, "lookup_table": lut}, deq


def pack_fp8(weight: torch.Tensor, per_channel: bool, static: bool) -> Packed:
    amax = weight.abs().amax(dim=1, keepdim=True) if per_channel else weight.abs().amax()
    scale = (amax / 448.0).float()
    q = (weight / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    tensors = {"weight": q, "weight_scale": scale if per_channel else scale.reshape(())}
    if static:
        tensors["input_scale"] = torch.tensor(0.05)
    return tensors, q.float() * scale
