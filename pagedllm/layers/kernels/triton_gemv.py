"""Skinny matrix product for decoding a few sequences: y = x @ W^T with x [M, K], M <= 16,
W [N, K] row-major (a linear layer's weight), split over N and K.

Batch-1 decoding is a weight read: every byte of W once per token. cuBLAS picks small
tiles and its own split-K for these shapes and reaches 3.1-4.3 TB/s on an H200
(docs/benchmarks.md); this kernel is the candidate to measure against it
(`scripts/kernel_bench.py`, rows "gemv"). It is not wired into the linear layers.

    grid = (cdiv(N, BLOCK_N), S)      program (n, s)
    rows    : output columns [n*BLOCK_N, (n+1)*BLOCK_N) of every x row (M padded to 16)
    K range : [s*L, min((s+1)*L, K)) with L = cdiv(cdiv(K, BLOCK_K), S) * BLOCK_K
With S == 1 the program writes y in x.dtype. Otherwise it writes its float32 partial
sums to part [S, M, N] and the splits are added in order (torch.sum over dim 0), so the
result does not depend on timing. Accumulation is float32 throughout.
Torch reference: `gemv_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu

BLOCK_M = 16  # tl.dot's smallest M; rows past M are masked


@triton.jit
def _gemv_kernel(
    x_ptr,  # [M, K], row stride stride_xm, last dim contiguous
    w_ptr,  # [N, K] contiguous
    out_ptr,  # S == 1: y [M, N] in x.dtype; else part [S, M, N] float32 (contiguous)
    M,
    N,
    K,
    stride_xm,
    chunks_per_split,  # L / BLOCK_K
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PARTIAL: tl.constexpr,  # S > 1
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    lo = split * chunks_per_split * BLOCK_K
    hi = tl.minimum(lo + chunks_per_split * BLOCK_K, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_K):
        k = start + offs_k
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
        acc += tl.dot(x, tl.trans(w), input_precision=DOT_PRECISION)
    mask = m_mask[:, None] & n_mask[None, :]
    if PARTIAL:
        base = out_ptr + split.to(tl.int64) * M * N
        tl.store(base + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)
    else:
        y = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y, mask=mask)


def choose_num_splits(n: int, k: int, block_n: int, block_k: int, num_sms: int) -> int:
    """Enough K splits for about four programs per SM, each at least 4 K chunks."""
    n_blocks = tu.cdiv(n, block_n)
    wanted = tu.cdiv(4 * num_sms, n_blocks)
    return max(1, min(wanted, tu.cdiv(k, 4 * block_k)))


def gemv(
    x: torch.Tensor,  # [M, K], M <= 16, last dim contiguous
    weight: torch.Tensor,  # [N, K] contiguous, x.dtype
    num_splits: int | None = None,
    block_n: int = 64,
    block_k: int = 128,
    num_warps: int = 4,
    num_stages: int = 4,
) -> torch.Tensor:  # [M, N] in x.dtype
    """x @ weight.T for a few rows (no bias)."""
    _check(x, weight)
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if num_splits is None:
        num_splits = choose_num_splits(n, k, block_n, block_k, tu.num_sms(x.device))
    chunks = tu.cdiv(tu.cdiv(k, block_k), num_splits)
    splits = tu.cdiv(tu.cdiv(k, block_k), chunks)  # drop splits that would be empty
    target = (
        out if splits == 1 else torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    )
    tu.launch(
        _gemv_kernel,
        (tu.cdiv(n, block_n), splits),
        x.device,
        x,
        weight,
        target,
        m,
        n,
        k,
        x.stride(0),
        chunks,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_M=BLOCK_M,
        PARTIAL=splits > 1,
        DOT_PRECISION=tu.dot_precision(x.dtype),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if splits > 1:
        out.copy_(target.sum(dim=0))
    return out


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    tu.check_ndim("x", x, 2)
    tu.check_ndim("weight", weight, 2)
    tu.check_dtype("x", x, tu.FLOAT_DTYPES)
    if weight.dtype != x.dtype:
        raise ValueError(f"weight dtype {weight.dtype} != x dtype {x.dtype}")
    if x.shape[0] > BLOCK_M:
        raise ValueError(f"x has {x.shape[0]} rows; gemv takes at most {BLOCK_M}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match x {tuple(x.shape)}")
    tu.check_last_dim_contiguous("x", x)
    tu.check_contiguous("weight", weight)
    tu.check_same_device(("x", x), ("weight", weight))


def gemv_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """float32 product, rounded once to x.dtype."""
    return (x.float() @ weight.float().T).to(x.dtype)
