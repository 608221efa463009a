"""The router's choice: softmax over the experts' logits, then the top k, as HF
transformers computes it (Mixtral, Qwen2-MoE, Qwen3-MoE): the softmax in float32,
and with `renormalize` the k weights rescaled to sum to one."""

from __future__ import annotations

import os

import torch

# Read once: the check sits on every MoE layer's forward. On by default (L3 on the H200:
# 240.4 -> 292.7 tok/s); PAGEDLLM_TRITON_MOE_ROUTER=0 keeps the torch path.
_TRITON_ROUTER = os.environ.get("PAGEDLLM_TRITON_MOE_ROUTER", "1") != "0"


def select_experts(
    router_logits: torch.Tensor,  # [T, E] model dtype
    top_k: int,
    renormalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights [T, k] float32, topk_ids [T, k] int32), largest first; the weights
    stay in float32 until the experts apply them. On CUDA one Triton launch
    (kernels/triton_moe_router.py) unless PAGEDLLM_TRITON_MOE_ROUTER=0;
    `select_experts_native` otherwise."""
    if _TRITON_ROUTER and router_logits.is_cuda:
        # Imported here: triton must not be imported before TRITON_INTERPRET is settled.
        from pagedllm.layers.kernels import triton_moe_router

        if router_logits.shape[1] <= triton_moe_router.MAX_EXPERTS:
            return triton_moe_router.select_experts(router_logits, top_k, renormalize)
    return select_experts_native(router_logits, top_k, renormalize)


def select_experts_native(
    router_logits: torch.Tensor,  # [T, E] model dtype
    top_k: int,
    renormalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch path (and the kernel's reference)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    topk_weights, topk_ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    return topk_weights, topk_ids.to(torch.int32)
