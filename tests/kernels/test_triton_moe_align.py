"""moe_align_block_size's three Triton launches against its torch ops: the same
sorted_token_ids, expert_ids and num_tokens_post_padded, bit for bit."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import gpu_test

from pagedllm.layers.fused_moe.moe_align_block_size import (
    max_padded_len,
    moe_align_block_size_torch,
)


def _check(ids: torch.Tensor, block_m: int, experts: int) -> None:
    from pagedllm.layers.kernels.triton_moe_align import moe_align_block_size_triton

    total = max_padded_len(ids.numel(), experts, block_m)
    got = moe_align_block_size_triton(ids, block_m, experts, total)
    want = moe_align_block_size_torch(ids, block_m, experts)
    for name, g, w in zip(("sorted_token_ids", "expert_ids", "num_post"), got, want, strict=True):
        assert g.dtype == torch.int32, name
        assert g.tolist() == w.tolist(), name


@pytest.mark.parametrize(
    "tokens,top_k,experts,block_m",
    [
        (1, 1, 4, 16),  # one pair
        (7, 2, 6, 4),  # experts not a power of two, some unused
        (100, 8, 16, 32),  # 800 pairs: several chunks, several blocks per expert
        (40, 8, 128, 16),  # the Qwen3-MoE expert count
    ],
)
def test_triton_align_matches_torch(tokens: int, top_k: int, experts: int, block_m: int) -> None:
    gen = torch.Generator().manual_seed(tokens + experts)
    ids = torch.rand(tokens, experts, generator=gen).topk(top_k, dim=1).indices
    _check(ids.to(torch.int32), block_m, experts)


def test_triton_align_skewed_routing() -> None:
    """Every pair on one expert but one: a long run crossing the chunks."""
    ids = torch.full((300, 2), 3, dtype=torch.int32)
    ids[:, 1] = 5
    ids[17, 1] = 0
    _check(ids, 16, 8)


@gpu_test
@pytest.mark.parametrize("tokens,block_m", [(1, 16), (256, 16), (2048, 64), (8192, 128)])
def test_triton_align_gpu_qwen3_moe_shape(tokens: int, block_m: int) -> None:
    """128 experts, top 8: the dispatching entry point on CUDA against the torch ops."""
    from pagedllm.layers.fused_moe.moe_align_block_size import moe_align_block_size

    gen = torch.Generator(device="cuda").manual_seed(tokens)
    ids = torch.rand(tokens, 128, generator=gen, device="cuda").topk(8, dim=1).indices.int()
    got = moe_align_block_size(ids, block_m, 128)
    want = moe_align_block_size_torch(ids, block_m, 128)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
