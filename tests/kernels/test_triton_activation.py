"""silu_and_mul against the torch reference."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.kernels.triton_activation import silu_and_mul, silu_and_mul_ref


def _check(num_tokens: int, inter: int, dtype: torch.dtype, device: str) -> None:
    gen = torch.Generator().manual_seed(inter)
    wide = torch.randn(num_tokens, 2 * inter + 16, generator=gen).to(dtype).to(device)
    x = wide[:, : 2 * inter]  # a strided view
    assert_close(silu_and_mul(x), silu_and_mul_ref(x), dtype)


@pytest.mark.parametrize("num_tokens,inter", [(3, 64), (5, 1500), (1, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_silu_and_mul(num_tokens: int, inter: int, dtype: torch.dtype) -> None:
    _check(num_tokens, inter, dtype, "cpu")


def test_silu_and_mul_rejects_odd_width() -> None:
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.zeros(2, 5))


@gpu_test
@pytest.mark.parametrize("num_tokens,inter", [(4096, 3072), (1024, 14336), (7, 1000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_silu_and_mul_gpu(num_tokens: int, inter: int, dtype: torch.dtype) -> None:
    _check(num_tokens, inter, dtype, "cuda")
