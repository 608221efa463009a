"""reshape_and_cache against its torch reference: strided key/value views, slot -1."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import gpu_test

from pagedllm.layers.kernels.triton_reshape_and_cache import (
    reshape_and_cache,
    reshape_and_cache_ref,
)


def _check(
    num_tokens: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    num_blocks: int,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    # key/value are strided views of one fused [T, 2 * kv_size + 8] row, as after a qkv split.
    kv_size = num_kv_heads * head_dim
    fused = torch.randn(num_tokens, 2 * kv_size + 8, generator=gen).to(dtype).to(device)
    key = fused[:, :kv_size].view(num_tokens, num_kv_heads, head_dim)
    value = fused[:, kv_size + 8 :].view(num_tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[torch.rand(num_tokens, generator=gen) < 0.25] = -1  # padded tokens
    slot_mapping = slots.to(device)
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    cache = cache.to(dtype).to(device)
    expected = cache.clone()
    reshape_and_cache(key, value, cache, slot_mapping)
    reshape_and_cache_ref(key, value, expected, slot_mapping)
    assert torch.equal(cache, expected)


@pytest.mark.parametrize("num_kv_heads,head_dim", [(1, 64), (2, 128), (3, 80)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reshape_and_cache(num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    _check(13, num_kv_heads, head_dim, 16, 4, dtype, "cpu")


def test_reshape_and_cache_odd_block_size() -> None:
    _check(7, 2, 64, 5, 6, torch.float16, "cpu", seed=1)


def test_reshape_and_cache_rejects_strided_cache() -> None:
    cache = torch.zeros(2, 4, 16, 2, 128)[:, :, :, :, :64]
    key = torch.zeros(3, 2, 64)
    with pytest.raises(ValueError, match="contiguous"):
        reshape_and_cache(key, key, cache, torch.zeros(3, dtype=torch.int64))


@gpu_test
@pytest.mark.parametrize("num_kv_heads,head_dim", [(8, 128), (8, 64), (4, 96)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_reshape_and_cache_gpu(num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    _check(4096, num_kv_heads, head_dim, 16, 1024, dtype, "cuda")
