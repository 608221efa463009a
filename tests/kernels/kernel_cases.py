"""Shared builders and checks of the kernel tests (imported as a plain module: this
folder has no __init__.py, so pytest puts it on sys.path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

F = TypeVar("F", bound=Callable[..., object])

# Relative error bounds ||out - ref|| / ||ref|| by input dtype (METHOD: fp32 far under
# 1e-3; 16-bit operands between 1e-3 and 1e-2).
REL_TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def gpu_test(fn: F) -> F:
    """Marks a test `gpu` and skips it where CUDA is absent."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    return pytest.mark.gpu(skip(fn))  # type: ignore[no-any-return]


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all(), "non-finite values in the output"
    diff = (out.double() - ref.double()).norm()
    scale = ref.double().norm().clamp_min(1e-12)
    rel = float(diff / scale)
    assert rel < REL_TOL[dtype], f"relative error {rel:.3g} >= {REL_TOL[dtype]:.1g}"
