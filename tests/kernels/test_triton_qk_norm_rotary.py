"""Qwen3's fused per-head q/k RMSNorm + rotary against the two torch references run one
after the other (strided q/k views of a fused qkv row; v untouched)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.kernels.triton_qk_norm_rotary import (
    qk_norm_rotary,
    qk_norm_rotary_ref,
    supports,
)
from pagedllm.layers.kernels.triton_rotary import make_cos_sin_cache


def _check(
    num_tokens: int, num_q: int, num_k: int, head_dim: int, dtype: torch.dtype, device: str
) -> None:
    gen = torch.Generator().manual_seed(num_tokens * 7 + head_dim)
    q_size, k_size = num_q * head_dim, num_k * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * k_size, generator=gen).to(dtype).to(device)
    v_before = qkv[:, q_size + k_size :].clone()
    q = qkv[:, :q_size].view(num_tokens, num_q, head_dim)
    k = qkv[:, q_size : q_size + k_size].view(num_tokens, num_k, head_dim)
    q_w = (1 + 0.2 * torch.randn(head_dim, generator=gen)).to(dtype).to(device)
    k_w = (1 + 0.2 * torch.randn(head_dim, generator=gen)).to(dtype).to(device)
    cache = make_cos_sin_cache(head_dim, 4096, 1e6, device)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen).to(device)
    q_ref, k_ref = q.clone(), k.clone()
    qk_norm_rotary(positions, q, k, q_w, k_w, 1e-6, cache)
    qk_norm_rotary_ref(positions, q_ref, k_ref, q_w, k_w, 1e-6, cache)
    assert_close(q, q_ref, dtype)
    assert_close(k, k_ref, dtype)
    assert torch.equal(qkv[:, q_size + k_size :], v_before)


@pytest.mark.parametrize("num_q,num_k", [(4, 4), (8, 2), (6, 3)])
@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rotary(num_q: int, num_k: int, head_dim: int, dtype: torch.dtype) -> None:
    _check(5, num_q, num_k, head_dim, dtype, "cpu")


def test_float32_matches_reference_to_rounding() -> None:
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(3, 2, 32, generator=gen)
    k = torch.randn(3, 1, 32, generator=gen)
    w = torch.randn(32, generator=gen)
    cache = make_cos_sin_cache(32, 64, 10000.0)
    pos = torch.tensor([0, 9, 63])
    q2, k2 = q.clone(), k.clone()
    qk_norm_rotary(pos, q, k, w, w, 1e-6, cache)
    qk_norm_rotary_ref(pos, q2, k2, w, w, 1e-6, cache)
    torch.testing.assert_close(q, q2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, k2, atol=1e-5, rtol=1e-5)


def test_supports_only_full_neox_power_of_two_heads() -> None:
    assert supports(128, 128, True)
    assert not supports(128, 64, True)
    assert not supports(128, 128, False)
    assert not supports(80, 80, True)


def test_rejects_partial_rotary() -> None:
    q = torch.randn(2, 2, 64)
    with pytest.raises(ValueError, match="rotary dim"):
        qk_norm_rotary(
            torch.tensor([0, 1]),
            q,
            q.clone(),
            torch.ones(64),
            torch.ones(64),
            1e-6,
            make_cos_sin_cache(32, 8, 10000.0),
        )


@gpu_test
@pytest.mark.parametrize("num_tokens", [1, 256, 4096])
def test_qk_norm_rotary_gpu(num_tokens: int) -> None:
    _check(num_tokens, 16, 8, 128, torch.bfloat16, "cuda")
