"""The skinny-product kernel (decode linear layers) against the float32 product."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.kernels.triton_gemv import choose_num_splits, gemv, gemv_ref


def _check(m: int, n: int, k: int, dtype: torch.dtype, device: str, **kw: int) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen).to(dtype).to(device)
    w = torch.randn(n, k, generator=gen).to(dtype).to(device)
    assert_close(gemv(x, w, **kw), gemv_ref(x, w), dtype)


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("n,k", [(96, 256), (70, 200)])  # 70/200: ragged N and K tails
@pytest.mark.parametrize("splits", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv(m: int, n: int, k: int, splits: int, dtype: torch.dtype) -> None:
    _check(m, n, k, dtype, "cpu", num_splits=splits, block_n=32, block_k=32)


def test_strided_rows_and_default_splits() -> None:
    x = torch.randn(2, 300)[:, :256]  # row stride 300
    w = torch.randn(64, 256)
    torch.testing.assert_close(gemv(x, w, block_n=32, block_k=32), gemv_ref(x, w))


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at most 16"):
        gemv(torch.randn(17, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="does not match"):
        gemv(torch.randn(1, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="dtype"):
        gemv(torch.randn(1, 8), torch.randn(4, 8).double())


def test_choose_num_splits() -> None:
    assert choose_num_splits(6144, 4096, 64, 128, 132) == 6  # 96 column blocks
    assert choose_num_splits(128256, 4096, 64, 128, 132) == 1  # the LM head fills the GPU
    assert choose_num_splits(64, 256, 64, 128, 132) == 1  # too short to split


@gpu_test
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
def test_gemv_gpu(m: int, n: int, k: int) -> None:
    _check(m, n, k, torch.bfloat16, "cuda")
