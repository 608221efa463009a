"""Piecewise CUDA graphs on the CPU: the token buckets and the attention break (the
GPU test is tests/models/test_piecewise_graphs_gpu.py)."""

from __future__ import annotations

from typing import Any

import torch

from pagedllm.layers.attention.graph_break import active_handler, break_at_attention
from pagedllm.layers.attention.layer import Attention
from pagedllm.worker.piecewise_graphs import token_buckets


def test_token_buckets_cover_the_budget() -> None:
    sizes = token_buckets(8192)
    assert sizes[0] == 16 and sizes[-1] == 8192 and sizes == sorted(set(sizes))
    for n in range(1, 8193, 37):  # at most a quarter more rows than needed, past 512
        bucket = next(s for s in sizes if s >= n)
        assert bucket - n < max(n // 4 + 1, 512)
    assert token_buckets(1000)[-1] == 1000 and token_buckets(100) == [16, 32, 64, 100]


def test_attention_hands_its_inputs_to_the_break_handler() -> None:
    layer = Attention(num_heads=2, head_dim=4, scale=0.5, num_kv_heads=1)
    q, k, v = torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 4)
    seen: list[Any] = []
    out = torch.zeros(3, 8)

    def handler(attn: Attention, *args: Any) -> torch.Tensor:
        seen.append((attn, *args))
        return out

    with break_at_attention(handler):
        assert layer(q, k, v, None, None) is out  # type: ignore[arg-type]
    assert active_handler() is None
    assert seen[0][0] is layer and seen[0][1] is q and seen[0][4] is None
