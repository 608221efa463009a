"""Fused residual add + RMSNorm, rounding like HF transformers:

    s        = (x + residual)           in x.dtype         (the new residual)
    out      = weight * (s * rsqrt(mean(s^2) + eps)).to(x.dtype)   in x.dtype

The input is [T, hidden] (one row per token, any row stride) or [T, R, hidden] (R rows
per token, e.g. Qwen3's per-head q/k norm on a strided view of the fused qkv output).
Torch reference: `rms_norm_ref`, around RMSNorm's CPU path (layers/layernorm.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers.layernorm import rms_norm_native
from pagedllm.triton_utils import (
    FLOAT_DTYPES,
    check_dtype,
    check_last_dim_contiguous,
    check_same_device,
    launch,
    next_power_of_2,
)


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [T, R, hidden], strides (stride_xt, stride_xr, 1)
    residual_ptr,  # [T, R, hidden], strides (stride_rt, stride_rr, 1); read if HAS_RESIDUAL
    weight_ptr,  # [hidden]
    out_ptr,  # [T, R, hidden] contiguous
    new_residual_ptr,  # [T, R, hidden] contiguous; written if HAS_RESIDUAL
    eps,
    stride_xt,
    stride_xr,
    stride_rt,
    stride_rr,
    ROWS: tl.constexpr,  # R
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,  # next_power_of_2(HIDDEN)
    HAS_RESIDUAL: tl.constexpr,
):
    # grid = (T * R,): one program normalises one row.
    pid = tl.program_id(0).to(tl.int64)
    t = pid // ROWS
    r = pid % ROWS
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    x = tl.load(x_ptr + t * stride_xt + r * stride_xr + offs, mask=mask, other=0.0)
    dtype = x.dtype
    s = x.to(tl.float32)
    if HAS_RESIDUAL:
        res = tl.load(residual_ptr + t * stride_rt + r * stride_rr + offs, mask=mask, other=0.0)
        s_rounded = (s + res.to(tl.float32)).to(dtype)
        tl.store(new_residual_ptr + pid * HIDDEN + offs, s_rounded, mask=mask)
        s = s_rounded.to(tl.float32)
    mean_sq = tl.sum(s * s, 0) / HIDDEN
    normed = (s * tl.rsqrt(mean_sq + eps)).to(dtype).to(tl.float32)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid * HIDDEN + offs, (normed * w).to(dtype), mask=mask)


def rms_norm(
    x: torch.Tensor,  # [T, hidden] or [T, R, hidden], last dim contiguous
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # like x
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (out, new_residual): new_residual = x + residual (None without residual) and
    out = RMSNorm(new_residual or x) * weight, both contiguous in x.dtype."""
    x3 = _as_3d("x", x)
    res3 = None if residual is None else _as_3d("residual", residual)
    _check(x, weight, residual)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    new_residual = None if residual is None else torch.empty_like(out)
    num_tokens, rows, hidden = x3.shape
    if out.numel() == 0:
        return out, new_residual
    launch(
        _rms_norm_kernel,
        (num_tokens * rows,),
        x.device,
        x3,
        x3 if res3 is None else res3,
        weight,
        out,
        out if new_residual is None else new_residual,
        eps,
        x3.stride(0),
        x3.stride(1),
        0 if res3 is None else res3.stride(0),
        0 if res3 is None else res3.stride(1),
        ROWS=rows,
        HIDDEN=hidden,
        BLOCK=next_power_of_2(hidden),
        HAS_RESIDUAL=residual is not None,
        num_warps=_num_warps(hidden),
    )
    return out, new_residual


def fused_add_rms_norm(
    x: torch.Tensor,  # [T, hidden] or [T, R, hidden]
    residual: torch.Tensor,  # like x
    weight: torch.Tensor,  # [hidden]
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual) * weight, x + residual)."""
    out, new_residual = rms_norm(x, weight, eps, residual)
    assert new_residual is not None
    return out, new_residual


def _as_3d(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 2:
        return t.unsqueeze(1)
    if t.dim() == 3:
        return t
    raise ValueError(f"{name}: expected [T, hidden] or [T, R, hidden], got {tuple(t.shape)}")


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    check_dtype("x", x, FLOAT_DTYPES)
    check_dtype("weight", weight, FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    check_last_dim_contiguous("weight", weight)
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight shape {tuple(weight.shape)} != ({x.shape[-1]},)")
    check_same_device(("x", x), ("weight", weight))
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError("residual must have x's shape and dtype")
        check_last_dim_contiguous("residual", residual)
        check_same_device(("x", x), ("residual", residual))


def _num_warps(hidden: int) -> int:
    return min(max(next_power_of_2(hidden) // 256, 1), 16)


def rms_norm_ref(
    x: torch.Tensor,  # [T, hidden] or [T, R, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # like x
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch reference of `rms_norm`: the residual add, then RMSNorm's CPU path
    (layernorm.rms_norm_native, HF's LlamaRMSNorm arithmetic), in x.dtype."""
    new_residual = None if residual is None else x + residual
    s = x if new_residual is None else new_residual
    return rms_norm_native(s, weight, eps).to(x.dtype), new_residual
