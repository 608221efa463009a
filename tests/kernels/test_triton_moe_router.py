"""The fused MoE router (softmax, top-k, renormalisation) against its torch reference."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import gpu_test

from pagedllm.layers.kernels.triton_moe_router import select_experts, select_experts_ref


def _check(tokens: int, experts: int, top_k: int, renorm: bool, dtype: torch.dtype, device: str):
    gen = torch.Generator().manual_seed(tokens * 1000 + experts)
    logits = (3 * torch.randn(tokens, experts + 5, generator=gen)).to(dtype).to(device)
    logits = logits[:, :experts]  # rows strided, last dim contiguous
    weights, ids = select_experts(logits, top_k, renorm)
    ref_w, ref_i = select_experts_ref(logits, top_k, renorm)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == ids.shape == (tokens, top_k)
    # bf16 logits tie often; either tied expert is right, so compare the chosen logits.
    chosen, ref_chosen = logits.gather(1, ids.long()), logits.gather(1, ref_i.long())
    assert torch.equal(chosen.cpu(), ref_chosen.cpu())
    if dtype == torch.float32:
        assert torch.equal(ids.cpu(), ref_i.cpu())  # random float32 logits: no ties
    torch.testing.assert_close(weights.cpu(), ref_w.cpu(), atol=1e-6, rtol=1e-5)
    if renorm:
        torch.testing.assert_close(weights.sum(-1).cpu(), torch.ones(tokens))


@pytest.mark.parametrize(
    "tokens,experts,top_k", [(1, 8, 2), (3, 128, 8), (5, 60, 4), (2, 64, 6), (4, 7, 7)]
)
@pytest.mark.parametrize("renorm", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_router_matches_torch(
    tokens: int, experts: int, top_k: int, renorm: bool, dtype: torch.dtype
) -> None:
    _check(tokens, experts, top_k, renorm, dtype, "cpu")


def test_router_ties_pick_the_lower_expert_first() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0, 2.0]])
    weights, ids = select_experts(logits, 3, renormalize=True)
    assert ids.tolist() == [[1, 3, 4]]
    torch.testing.assert_close(weights, torch.full((1, 3), 1 / 3))


def test_router_rejects_bad_top_k() -> None:
    with pytest.raises(ValueError, match="top_k"):
        select_experts(torch.zeros(2, 4), 5, renormalize=False)
    assert select_experts(torch.zeros(0, 4), 2, renormalize=False)[1].shape == (0, 2)


@gpu_test
@pytest.mark.parametrize("tokens,experts,top_k", [(1, 128, 8), (4096, 128, 8), (33, 60, 4)])
@pytest.mark.parametrize("renorm", [True, False])
def test_router_gpu(tokens: int, experts: int, top_k: int, renorm: bool) -> None:
    _check(tokens, experts, top_k, renorm, torch.bfloat16, "cuda")
