"""The router's choice in one launch: softmax over a token's expert logits in float32,
the top k (largest first), and with `renormalize` the k weights rescaled to sum to one.

Torch reference: `select_experts_ref`, the CPU path (layers/fused_moe/router.py), which
takes five or six kernels on CUDA (softmax, top-k, sum, division, the int32 cast): at
batch-1 decode of a 48-layer MoE that launch time is a fifth of a millisecond per token.
One program per token: the E logits fit in one block (E <= MAX_EXPERTS), and the top k
are k rounds of argmax with the winner masked out (ties go to the lower expert id).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers.fused_moe.router import select_experts_native as select_experts_ref
from pagedllm.triton_utils import (
    FLOAT_DTYPES,
    check_dtype,
    check_last_dim_contiguous,
    check_ndim,
    launch,
)

__all__ = ["MAX_EXPERTS", "select_experts", "select_experts_ref"]

MAX_EXPERTS = 1024


@triton.jit
def _moe_router_kernel(
    logits_ptr,  # [T, E], row stride stride_t, last dim contiguous
    weights_ptr,  # [T, TOP_K] float32 contiguous
    ids_ptr,  # [T, TOP_K] int32 contiguous
    stride_t,
    E: tl.constexpr,
    TOP_K: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,  # TOP_K rounded up to a power of two
):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    mask = offs < E
    x = tl.load(logits_ptr + t * stride_t + offs, mask=mask, other=float("-inf"))
    x = x.to(tl.float32)
    p = tl.exp(x - tl.max(x, axis=0))
    p = tl.where(mask, p / tl.sum(p, axis=0), -1.0)
    slots = tl.arange(0, BLOCK_K)
    top_w = tl.zeros([BLOCK_K], dtype=tl.float32)
    top_i = tl.zeros([BLOCK_K], dtype=tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.max(p, axis=0)
        idx = tl.min(tl.where(p == best, offs, BLOCK_E), axis=0)
        top_w = tl.where(slots == j, best, top_w)
        top_i = tl.where(slots == j, idx, top_i)
        p = tl.where(offs == idx, -1.0, p)
    if RENORMALIZE:
        top_w = top_w / tl.sum(top_w, axis=0)
    kmask = slots < TOP_K
    tl.store(weights_ptr + t * TOP_K + slots, top_w, mask=kmask)
    tl.store(ids_ptr + t * TOP_K + slots, top_i, mask=kmask)


def select_experts(
    router_logits: torch.Tensor,  # [T, E] model dtype
    top_k: int,
    renormalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights [T, k] float32, topk_ids [T, k] int32), largest first."""
    check_ndim("router_logits", router_logits, 2)
    check_dtype("router_logits", router_logits, FLOAT_DTYPES)
    check_last_dim_contiguous("router_logits", router_logits)
    num_tokens, num_experts = router_logits.shape
    if not 0 < top_k <= num_experts or num_experts > MAX_EXPERTS:
        raise ValueError(
            f"top_k: {top_k} must be in [1, {num_experts}] with at most {MAX_EXPERTS} experts"
        )
    device = router_logits.device
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=device)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int32, device=device)
    if num_tokens == 0:
        return weights, ids
    launch(
        _moe_router_kernel,
        (num_tokens,),
        device,
        router_logits,
        weights,
        ids,
        router_logits.stride(0),
        E=num_experts,
        TOP_K=top_k,
        RENORMALIZE=renormalize,
        BLOCK_E=triton.next_power_of_2(num_experts),
        BLOCK_K=triton.next_power_of_2(top_k),
        num_warps=1 if num_experts <= 256 else 4,
    )
    return weights, ids
