"""In-place neox rotary against the torch reference (strided q/k views, partial rotary)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.kernels.triton_rotary import (
    make_cos_sin_cache,
    rotary_embedding,
    rotary_embedding_ref,
)


def _check(
    num_tokens: int,
    num_q_heads: int,
    num_k_heads: int,
    head_size: int,
    rot_dim: int,
    dtype: torch.dtype,
    device: str,
    is_neox_style: bool = True,
) -> None:
    gen = torch.Generator().manual_seed(num_tokens + head_size)
    q_size, k_size = num_q_heads * head_size, num_k_heads * head_size
    qkv = torch.randn(num_tokens, q_size + 2 * k_size, generator=gen).to(dtype).to(device)
    q = qkv[:, :q_size].view(num_tokens, num_q_heads, head_size)
    k = qkv[:, q_size : q_size + k_size].view(num_tokens, num_k_heads, head_size)
    cache = make_cos_sin_cache(rot_dim, 4096, 10000.0, device)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen).to(device)
    q_ref, k_ref = q.clone(), k.clone()
    rotary_embedding(positions, q, k, cache, is_neox_style)
    rotary_embedding_ref(positions, q_ref, k_ref, cache, is_neox_style)
    assert_close(q, q_ref, dtype)
    assert_close(k, k_ref, dtype)
    # The value part of the fused row is untouched.
    assert torch.isfinite(qkv).all()


@pytest.mark.parametrize("num_q_heads,num_k_heads", [(4, 4), (8, 2), (6, 3)])
@pytest.mark.parametrize("head_size,rot_dim", [(64, 64), (128, 128), (80, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary(
    num_q_heads: int, num_k_heads: int, head_size: int, rot_dim: int, dtype: torch.dtype
) -> None:
    _check(7, num_q_heads, num_k_heads, head_size, rot_dim, dtype, "cpu")


@pytest.mark.parametrize("rot_dim", [64, 32])
def test_rotary_gptj_style(rot_dim: int) -> None:
    _check(5, 4, 2, 64, rot_dim, torch.float32, "cpu", is_neox_style=False)


def test_rotary_matches_hf_formula() -> None:
    # HF: q * cos + rotate_half(q) * sin with cos/sin of width rot_dim (halves repeated).
    cache = make_cos_sin_cache(64, 128, 10000.0)
    positions = torch.tensor([0, 5, 127])
    q = torch.randn(3, 2, 64)
    k = torch.randn(3, 1, 64)
    cos = cache[positions, :32].repeat(1, 2)[:, None]
    sin = cache[positions, 32:].repeat(1, 2)[:, None]

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[..., 32:], x[..., :32]], dim=-1)

    q_hf, k_hf = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    rotary_embedding(positions, q, k, cache)
    torch.testing.assert_close(q, q_hf)
    torch.testing.assert_close(k, k_hf)


@gpu_test
@pytest.mark.parametrize(
    "num_q_heads,num_k_heads,head_size", [(16, 8, 128), (32, 8, 128), (32, 32, 64)]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rotary_gpu(num_q_heads: int, num_k_heads: int, head_size: int, dtype: torch.dtype) -> None:
    _check(4096, num_q_heads, num_k_heads, head_size, head_size, dtype, "cuda")


@pytest.mark.parametrize("is_neox_style", [True, False])
def test_rotary_matches_rotary_embedding_module(is_neox_style: bool) -> None:
    """The kernel reads `RotaryEmbedding.cos_sin_cache` as it is and agrees with its forward."""
    from pagedllm.layers.rotary import RotaryEmbedding

    rope = RotaryEmbedding(64, 32, 256, 10000.0, is_neox_style)
    positions = torch.tensor([0, 3, 255, 17])
    q = torch.randn(4, 3 * 64)
    k = torch.randn(4, 1 * 64)
    q_ref, k_ref = rope(positions, q, k)
    rotary_embedding(
        positions, q.view(4, 3, 64), k.view(4, 1, 64), rope.cos_sin_cache, is_neox_style
    )
    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(k, k_ref)
