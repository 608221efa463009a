"""SiLU-and-mul of the fused gate/up projection: x [T, 2*I] -> silu(x[:, :I]) * x[:, I:].

Rounds like HF transformers: silu(gate) is rounded to x.dtype, then the product is.
Torch reference: `silu_and_mul_ref`, the CPU path of SiluAndMul (layers/activation.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers.activation import silu_and_mul_native as silu_and_mul_ref
from pagedllm.triton_utils import (
    FLOAT_DTYPES,
    cdiv,
    check_dtype,
    check_last_dim_contiguous,
    check_ndim,
    launch,
)

__all__ = ["silu_and_mul", "silu_and_mul_ref"]

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [T, 2 * INTER], strides (stride_xt, 1): gate | up
    out_ptr,  # [T, INTER] contiguous
    stride_xt,
    INTER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # grid = (T, cdiv(INTER, BLOCK)): program (t, c) writes out[t, c*BLOCK : (c+1)*BLOCK].
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < INTER
    gate = tl.load(x_ptr + t * stride_xt + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + t * stride_xt + INTER + offs, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g * tl.sigmoid(g)).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + t * INTER + offs, (act * up.to(tl.float32)).to(gate.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:  # [T, 2*I] -> [T, I]
    check_ndim("x", x, 2)
    check_dtype("x", x, FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    if x.shape[1] % 2:
        raise ValueError(f"x: last dim {x.shape[1]} must be even (gate | up)")
    num_tokens, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty((num_tokens, inter), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    launch(
        _silu_and_mul_kernel,
        (num_tokens, cdiv(inter, BLOCK)),
        x.device,
        x,
        out,
        x.stride(0),
        INTER=inter,
        BLOCK=BLOCK,
        num_warps=4,
    )
    return out
