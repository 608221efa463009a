"""The router's choice: softmax over the experts' logits, then the top k, as HF
transformers computes it (Mixtral, Qwen2-MoE, Qwen3-MoE): the softmax in float32,
and with `renormalize` the k weights rescaled to sum to one."""

from __future__ import annotations

import torch


def select_experts(
    router_logits: torch.Tensor,  # [T, E] model dtype
    top_k: int,
    renormalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights [T, k] float32, topk_ids [T, k] int32), largest first; the weights
    stay in float32 until the experts apply them."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    topk_weights, topk_ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    return topk_weights, topk_ids.to(torch.int32)
