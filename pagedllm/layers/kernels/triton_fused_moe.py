"""The grouped GEMM of the experts: C[i] = A[row(i)] @ B[e(i)]^T for the (token, expert)
pairs i sorted by expert (moe_align_block_size.py), one launch for all experts.

    grid = (cdiv(P, BLOCK_M) * cdiv(N, BLOCK_N),)   P = len(sorted_token_ids)
    program -> (row block m, column block n), grouped GROUP_M row blocks at a time so
    that neighbouring programs share B tiles in L2; row block m is expert expert_ids[m]
    and rows sorted_token_ids[m*BLOCK_M : (m+1)*BLOCK_M] (flat pair indices; T*k pads).

A's row of pair i is i // A_ROW_DIV: the token (A = hidden states [T, K], A_ROW_DIV =
top_k) for the gate/up GEMM, the pair itself (A = activations [T*k, K], A_ROW_DIV = 1)
for the down GEMM, which also multiplies row i by topk_weights[i] (MUL_ROUTED_WEIGHT).
C is [T*k, N], row i = pair i; padded rows are never stored.

GATED (the gate/up GEMM): B is w13 [E, 2N, K] and each program multiplies its A tile by
the gate rows n.. and the up rows N + n.. of its expert (two accumulators), then stores
silu(gate) * up, rounded as gate_up in the model dtype followed by silu_and_mul
(kernels/triton_activation.py): no [T*k, 2N] gate_up buffer, no separate launch.
Torch reference: fused_moe/moe_torch.fused_experts_torch (the CPU path of the experts).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.triton_utils import (
    FLOAT_DTYPES,
    cdiv,
    check_contiguous,
    check_dtype,
    check_last_dim_contiguous,
    dot_precision,
    launch,
)


# P and num_valid follow the token count (see triton_utils); they only bound loops/masks.
@triton.jit(do_not_specialize=["P", "num_valid"])
def _fused_moe_kernel(
    a_ptr,  # [M_a, K] strides (stride_am, 1)
    b_ptr,  # [E, N, K] (GATED: [E, 2N, K]) strides (stride_be, stride_bn, 1)
    c_ptr,  # [T*k, N] strides (stride_cm, 1)
    topk_weights_ptr,  # [T*k] float32 (read with MUL_ROUTED_WEIGHT)
    sorted_token_ids_ptr,  # [P] int32, flat pair index or num_valid (padding)
    expert_ids_ptr,  # [cdiv(P, BLOCK_M)] int32
    num_tokens_post_padded_ptr,  # [1] int32
    N,
    K,
    P,
    num_valid,  # T*k
    stride_am,
    stride_be,
    stride_bn,
    stride_cm,
    A_ROW_DIV: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr,
    GATED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(P, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_pid_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_pid_n)) % group_size
    pid_n = (pid % (GROUP_M * num_pid_n)) // group_size
    if pid_m * BLOCK_M >= tl.load(num_tokens_post_padded_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_token_ids_ptr + offs_m).to(tl.int64)
    row_ok = pair < num_valid
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_bn = offs_n % N  # wrapped columns are computed, never stored
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (pair // A_ROW_DIV)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + expert * stride_be + offs_bn[None, :] * stride_bn + offs_k[:, None]
    up_off = N * stride_bn  # GATED: the up rows follow the N gate rows
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k < K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if GATED:
            b_up = tl.load(b_ptrs + up_off, mask=k_ok[:, None], other=0.0)
            acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    dtype = c_ptr.dtype.element_ty
    if GATED:  # rounded as gate_up in `dtype`, then silu_and_mul
        gate = acc.to(dtype).to(tl.float32)
        silu = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
        acc = silu * acc_up.to(dtype).to(tl.float32)
    if MUL_ROUTED_WEIGHT:
        weight = tl.load(topk_weights_ptr + pair, mask=row_ok, other=0.0)
        acc = acc * weight[:, None]
    c_ptrs = c_ptr + pair[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(dtype), mask=row_ok[:, None] & (offs_n[None, :] < N))


def invoke_fused_moe_kernel(
    a: torch.Tensor,  # [M_a, K]
    b: torch.Tensor,  # [E, N, K]; gated: [E, 2N, K]
    c: torch.Tensor,  # [T*k, N] written
    topk_weights: torch.Tensor,  # [T*k] float32
    sorted_token_ids: torch.Tensor,  # [P] int32
    expert_ids: torch.Tensor,  # [cdiv(P, BLOCK_M)] int32
    num_tokens_post_padded: torch.Tensor,  # [1] int32
    a_row_div: int,
    mul_routed_weight: bool,
    config: dict[str, int],
    gated: bool = False,
) -> None:
    """One grouped GEMM; `config` holds BLOCK_M/N/K, GROUP_M, num_warps, num_stages.
    `gated`: c = silu(gate) * up of b's two row halves (the gate/up GEMM)."""
    check_dtype("a", a, FLOAT_DTYPES)
    check_last_dim_contiguous("a", a)
    check_contiguous("b", b)
    check_last_dim_contiguous("c", c)
    if b.shape[2] != a.shape[1] or b.shape[1] != c.shape[1] * (2 if gated else 1):
        raise ValueError(
            f"shapes a {tuple(a.shape)} b {tuple(b.shape)} c {tuple(c.shape)} (gated={gated})"
        )
    num_pairs, n, k = c.shape[0], c.shape[1], b.shape[2]
    p = sorted_token_ids.numel()
    grid = (cdiv(p, config["BLOCK_M"]) * cdiv(n, config["BLOCK_N"]),)
    launch(
        _fused_moe_kernel,
        grid,
        a.device,
        a,
        b,
        c,
        topk_weights,
        sorted_token_ids,
        expert_ids,
        num_tokens_post_padded,
        n,
        k,
        p,
        num_pairs,
        a.stride(0),
        b.stride(0),
        b.stride(1),
        c.stride(0),
        A_ROW_DIV=a_row_div,
        MUL_ROUTED_WEIGHT=mul_routed_weight,
        GATED=gated,
        DOT_PRECISION=dot_precision(a.dtype),
        **config,
    )
