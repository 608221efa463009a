"""Sort the (token, expert) pairs by expert and pad each expert's run to a multiple of
the GEMM's row block, so that every row block of the grouped GEMM belongs to one expert
(vLLM's `moe_align_block_size`). Sync-free and of static shapes: it runs inside CUDA
graphs.

The pairs are the T*k flat indices i = t*k + j of topk_ids (token t's j-th expert):

    sorted_token_ids  [ e0 e0 e0 pad | e2 e2 pad pad | e5 ... | pad ... ]   (block_m = 4)
    expert_ids        [ 0           | 2             | 5 ... | E ... ]       one per block
    num_tokens_post_padded = the padded length actually used (a 1-element tensor)

Padding entries hold T*k (no pair): the kernel masks them. Blocks past
num_tokens_post_padded hold expert E and are skipped by the kernel.

On CUDA three Triton launches compute it (kernels/triton_moe_align.py); the torch ops
below (about 25 launches, a stable sort among them) are its reference and CPU path.
"""

from __future__ import annotations

import torch


def max_padded_len(num_pairs: int, num_experts: int, block_m: int) -> int:
    """The most slots the padded order can need: every expert may waste block_m - 1."""
    return num_pairs + num_experts * (block_m - 1)


def moe_align_block_size(
    topk_ids: torch.Tensor,  # [T, k] int
    block_m: int,
    num_experts: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_token_ids [P] int32, expert_ids [cdiv(P, block_m)] int32,
    num_tokens_post_padded [1] int32), P = max_padded_len(T*k, E, block_m)."""
    if topk_ids.is_cuda:
        # Imported here: triton must not be imported before TRITON_INTERPRET is settled.
        from pagedllm.layers.kernels.triton_moe_align import moe_align_block_size_triton

        total = max_padded_len(topk_ids.numel(), num_experts, block_m)
        return moe_align_block_size_triton(topk_ids, block_m, num_experts, total)
    return moe_align_block_size_torch(topk_ids, block_m, num_experts)


def moe_align_block_size_torch(
    topk_ids: torch.Tensor,  # [T, k] int
    block_m: int,
    num_experts: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The torch ops (the reference of the Triton kernels)."""
    flat = topk_ids.reshape(-1).long()
    num_pairs, device = flat.numel(), flat.device
    counts = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    # Stable: within an expert the pairs keep their flat order (token order).
    order = torch.sort(flat, stable=True).indices
    rank = torch.arange(num_pairs, device=device) - (torch.cumsum(counts, 0) - counts)[flat[order]]
    dest = (padded_end - padded)[flat[order]] + rank
    total = max_padded_len(num_pairs, num_experts, block_m)
    sorted_ids = torch.full((total,), num_pairs, dtype=torch.int32, device=device)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    block_starts = torch.arange(0, total, block_m, device=device)
    expert_ids = torch.searchsorted(padded_end, block_starts, right=True)
    return sorted_ids, expert_ids.to(torch.int32), padded_end[-1:].to(torch.int32)
