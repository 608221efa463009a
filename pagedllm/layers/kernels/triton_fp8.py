"""FP8 (e4m3) kernels of fp8.py: per-tensor dynamic activation quantization, and a
weight-only GEMV for decode rows that reads the e4m3 weight and converts it in
registers (no activation quantization at all).

Activation quantization (reference: quantize_per_tensor_ref), x flattened to T values:
    one program (T <= FUSED_MAX): amax over x, then x / scale, in one kernel;
    else P programs: _amax_kernel writes P partial maxima, _quant_kernel reads all P
    (no atomics, no zero-filled buffer: deterministic) and quantizes its range.
    scale = max(amax, 1e-12) / 448; static scales skip the amax.

GEMV (reference: fp8_gemv_ref): y[m, n] = ws[n] * sum_k x[m, k] * w[n, k], w [N, K]
e4m3 (the layout torch._scaled_mm reads transposed), ws per output channel (a per-tensor scale is a
constant vector). FMA path: products in a [BLOCK_M, BLOCK_N, BLOCK_K] float32
register block reduced over K at the end; the e4m3 bits s eeee mmm placed at float32
bits 31, 26..23, 22..20 are w * 2^-120 exactly (subnormals included), so BIT_CONVERT
skips the e4m3 -> f16 -> f32 conversions and multiplies the scale by 2^120. DOT
path (BLOCK_M >= 16): w converted to x's dtype and multiplied on tensor cores. grid = (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N),
S), split-K partial sums added by triton_quant_gemv.sum_splits. A tile with
BLOCK_M >= 16 takes the DOT path unless told otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu
from pagedllm.layers.kernels.triton_quant_gemv import split_target, sum_splits
from pagedllm.layers.quantization import kernel_table

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
FUSED_MAX = 1 << 16  # up to this many values one program quantizes (two passes)
QUANT_BLOCK = 2048
MAX_PARTIALS = 1024


def quantize_per_tensor_ref(
    x: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 x, float32 0-dim scale) with x ~ x_q * scale."""
    if scale is None:
        scale = x.abs().amax().float().clamp(min=1e-12) / FP8_MAX
    scale = scale.reshape(())
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


@triton.jit(do_not_specialize=["total", "per_program"])
def _amax_kernel(x_ptr, part_ptr, total, per_program, BLOCK: tl.constexpr):
    lo = tl.program_id(0) * per_program
    hi = tl.minimum(lo + per_program, total)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < hi, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    tl.store(part_ptr + tl.program_id(0), tl.max(amax, axis=0))


@triton.jit(do_not_specialize=["total", "per_program", "num_parts"])
def _quant_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,  # float32 scalar: read (STATIC) or written by program 0
    part_ptr,  # [P] partial maxima (not STATIC, not FUSED)
    total,
    per_program,
    num_parts,
    BLOCK: tl.constexpr,
    PARTS: tl.constexpr,  # power of two >= num_parts
    STATIC: tl.constexpr,
    FUSED: tl.constexpr,  # one program: amax pass first
):
    lo = tl.program_id(0) * per_program
    hi = tl.minimum(lo + per_program, total)
    if STATIC:
        scale = tl.load(scale_ptr)
    else:
        if FUSED:
            amax_b = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(lo, hi, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                x = tl.load(x_ptr + offs, mask=offs < hi, other=0.0).to(tl.float32)
                amax_b = tl.maximum(amax_b, tl.abs(x))
            amax = tl.max(amax_b, axis=0)
        else:
            p = tl.arange(0, PARTS)
            amax = tl.max(tl.load(part_ptr + p, mask=p < num_parts, other=0.0), axis=0)
        scale = tl.maximum(amax, 1e-12) / 448.0
        if tl.program_id(0) == 0:
            tl.store(scale_ptr, scale)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < hi, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -448.0), 448.0)
        tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=offs < hi)


def quantize_per_tensor(
    x: torch.Tensor, scale: torch.Tensor | None = None, num_programs: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_per_tensor_ref in one kernel (few values or a static scale) or two."""
    tu.check_contiguous("x", x)
    total = x.numel()
    q = torch.empty(x.shape, dtype=FP8, device=x.device)
    static = scale is not None
    out_scale = scale.reshape(()) if scale is not None else torch.empty((), device=x.device)
    if num_programs is None:
        num_programs = 1 if total <= FUSED_MAX else min(MAX_PARTIALS, 4 * tu.num_sms(x.device))
    per = tu.cdiv(tu.cdiv(max(total, 1), num_programs), QUANT_BLOCK) * QUANT_BLOCK
    programs = tu.cdiv(max(total, 1), per)
    parts = torch.empty(programs, dtype=torch.float32, device=x.device)
    fused = programs == 1
    if not static and not fused:
        tu.launch(_amax_kernel, (programs,), x.device, x, parts, total, per, BLOCK=QUANT_BLOCK)
    tu.launch(
        _quant_kernel,
        (programs,),
        x.device,
        x,
        q,
        out_scale,
        parts,
        total,
        per,
        programs,
        BLOCK=QUANT_BLOCK,
        PARTS=tu.next_power_of_2(programs),
        STATIC=static,
        FUSED=fused,
        num_warps=8 if fused else 4,
    )
    return q, out_scale


@triton.jit(do_not_specialize=["M", "chunks_per_split"])  # see triton_utils
def _fp8_gemv_kernel(
    x_ptr,  # [M, K], row stride stride_xm, last dim contiguous
    w_ptr,  # [N, K] e4m3 contiguous
    ws_ptr,  # [N] float32 scales
    out_ptr,  # S == 1: y [M, N] in x.dtype; else part [S, M, N] float32
    M,
    N,
    K,
    stride_xm,
    chunks_per_split,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT: tl.constexpr,
    BIT_CONVERT: tl.constexpr,  # FMA path: e4m3 -> float32 by integer ops (w * 2^-120)
    PARTIAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    NUM_STAGES: tl.constexpr,  # loads prefetched ahead (a loop without tl.dot needs tl.range's)
):
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    lo = split * chunks_per_split * BLOCK_K
    hi = tl.minimum(lo + chunks_per_split * BLOCK_K, K)
    if DOT:
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    else:
        acc3 = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in tl.range(lo, hi, BLOCK_K, num_stages=NUM_STAGES):
        k = start + tl.arange(0, BLOCK_K)
        k_mask = k < hi
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + k[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        w = tl.load(
            w_ptr + offs_n.to(tl.int64)[:, None] * K + k[None, :],
            mask=n_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        if DOT:
            acc2 += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision=DOT_PRECISION)
        else:
            if BIT_CONVERT:
                b = w.to(tl.uint8, bitcast=True).to(tl.int32)
                wf = (((b & 0x7F) << 20) | ((b & 0x80) << 24)).to(tl.float32, bitcast=True)
            else:
                wf = w.to(tl.float32)
            acc3 += x.to(tl.float32)[:, None, :] * wf[None, :, :]
    if DOT:
        y = acc2
    else:
        y = tl.sum(acc3, axis=2)
    ws = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
    if BIT_CONVERT and not DOT:
        ws = ws * 1.329227995784916e36  # 2^120
    y = y * ws[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if PARTIAL:
        base = out_ptr + split.to(tl.int64) * M * N
        tl.store(base + offs_m[:, None] * N + offs_n[None, :], y, mask=mask)
    else:
        y = y.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y, mask=mask)


def fp8_gemv(
    x: torch.Tensor,  # [M, K], last dim contiguous, M small
    weight: torch.Tensor,  # [N, K] e4m3 contiguous
    weight_scale: torch.Tensor,  # [N] float32
    num_splits: int | None = None,
    blocks: tuple[int, int, int, int] | None = None,
    per_sm: int | None = None,
    dot: bool | None = None,
    bit_convert: bool | None = None,
    stages: int | None = None,
) -> torch.Tensor:  # [M, N] in x.dtype
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    tile = kernel_table.pick(kernel_table.FP8_GEMV_TILES, m)
    block_m, block_n, block_k, warps = blocks or tile[:4]
    per_sm = per_sm or tile[4]
    if dot is None:
        dot = block_m >= 16
    block_m = max(block_m, 16) if dot else min(block_m, tu.next_power_of_2(m))
    k_chunks = tu.cdiv(k, block_k)
    grid_mn = (tu.cdiv(m, block_m), tu.cdiv(n, block_n))
    if num_splits is None:
        num_splits = kernel_table.num_splits(
            grid_mn[0] * grid_mn[1], k_chunks, per_sm, tu.num_sms(x.device)
        )
    chunks = tu.cdiv(k_chunks, num_splits)
    splits = tu.cdiv(k_chunks, chunks)
    target = split_target(out, splits)
    stages = stages or kernel_table.FP8_GEMV_STAGES
    tu.launch(
        _fp8_gemv_kernel,
        (*grid_mn, splits),
        x.device,
        x,
        weight,
        weight_scale,
        target,
        m,
        n,
        k,
        x.stride(0),
        chunks,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        DOT=dot,
        BIT_CONVERT=kernel_table.FP8_GEMV_BIT_CONVERT if bit_convert is None else bit_convert,
        PARTIAL=splits > 1,
        DOT_PRECISION=tu.dot_precision(x.dtype),
        NUM_STAGES=stages,
        num_warps=warps,
        num_stages=stages,
    )
    if splits > 1:
        sum_splits(target, out)
    return out


def fp8_gemv_ref(
    x: torch.Tensor,  # [M, K]
    weight: torch.Tensor,  # [N, K] e4m3
    weight_scale: torch.Tensor,  # [N] float32
) -> torch.Tensor:  # [M, N] in x.dtype
    """Torch reference of `fp8_gemv`: float32 product with the dequantized weight,
    rounded once to x.dtype."""
    return (x.float() @ (weight.float() * weight_scale.float()[:, None]).t()).to(x.dtype)
