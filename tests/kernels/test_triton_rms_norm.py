"""rms_norm / fused_add_rms_norm against the torch reference."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.kernels.triton_rms_norm import fused_add_rms_norm, rms_norm, rms_norm_ref

EPS = 1e-6


def _check(shape: tuple[int, ...], dtype: torch.dtype, device: str, with_residual: bool) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    hidden = shape[-1]
    # x is a strided view (a slice of a wider row), as after a fused projection.
    wide = torch.randn(*shape[:-1], hidden + 8, generator=gen).to(dtype).to(device)
    x = wide[..., :hidden]
    residual = torch.randn(shape, generator=gen).to(dtype).to(device) if with_residual else None
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype).to(device)
    out, new_residual = rms_norm(x, weight, EPS, residual)
    ref_out, ref_residual = rms_norm_ref(x, weight, EPS, residual)
    assert_close(out, ref_out, dtype)
    if with_residual:
        assert new_residual is not None and ref_residual is not None
        assert_close(new_residual, ref_residual, dtype)
    else:
        assert new_residual is None


@pytest.mark.parametrize("shape", [(5, 64), (3, 100), (4, 3, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(shape: tuple[int, ...], dtype: torch.dtype, with_residual: bool) -> None:
    _check(shape, dtype, "cpu", with_residual)


def test_fused_add_rms_norm_returns_sum() -> None:
    x = torch.randn(3, 64)
    residual = torch.randn(3, 64)
    out, new_residual = fused_add_rms_norm(x, residual, torch.ones(64), EPS)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out, rms_norm_ref(x + residual, torch.ones(64), EPS)[0])


@gpu_test
@pytest.mark.parametrize("shape", [(4096, 1024), (4096, 4096), (333, 8192), (4096, 16, 128)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_gpu(shape: tuple[int, ...], dtype: torch.dtype, with_residual: bool) -> None:
    _check(shape, dtype, "cuda", with_residual)
