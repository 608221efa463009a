"""The FP8 kernels (per-tensor activation quantization, weight-only GEMV) against
their torch references: small shapes under the Triton interpreter, real ones on CUDA."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.kernels.triton_fp8 import (
    FP8,
    fp8_gemv,
    fp8_gemv_ref,
    quantize_per_tensor,
    quantize_per_tensor_ref,
)


def _check_quant(
    m: int, k: int, dtype: torch.dtype, device: str, static: bool, programs: int | None
) -> None:
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m + k)) * 3).to(dtype)
    x = x.to(device)
    scale = torch.tensor([0.01], device=device) if static else None
    q, s = quantize_per_tensor(x, scale, num_programs=programs)
    q_ref, s_ref = quantize_per_tensor_ref(x, scale)
    assert q.dtype == FP8 and s.shape == ()
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    assert torch.equal(q.float(), q_ref.float())


@pytest.mark.parametrize(
    "m,k,dtype,static,programs",
    [
        (3, 200, torch.float32, False, None),  # one program: amax pass, then quantize
        (5, 1000, torch.float16, False, 3),  # partial maxima, three programs
        (2, 300, torch.bfloat16, False, 2),
        (4, 100, torch.float32, True, None),  # static scale: values past 448 clamp
    ],
)
def test_quantize_per_tensor(
    m: int, k: int, dtype: torch.dtype, static: bool, programs: int | None
) -> None:
    _check_quant(m, k, dtype, "cpu", static, programs)


def _gemv_case(
    m: int, n: int, k: int, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) * 50).to(FP8)
    ws = torch.rand(n, generator=gen) / 100
    return x.to(device), w.to(device), ws.to(device), fp8_gemv_ref(x, w, ws).to(device)


@pytest.mark.parametrize("bit_convert", [False, True])
@pytest.mark.parametrize(
    "m,dtype,dot,splits,blocks",
    [
        (1, torch.float32, False, 2, (1, 16, 32, 4)),  # FMA, split-K
        (3, torch.float16, False, 1, (4, 16, 64, 4)),
        (5, torch.bfloat16, True, 3, (16, 16, 32, 4)),  # tensor cores, split-K
        (2, torch.float16, True, 1, (16, 32, 64, 4)),
    ],
)
def test_fp8_gemv(
    m: int,
    dtype: torch.dtype,
    dot: bool,
    splits: int,
    blocks: tuple[int, int, int, int],
    bit_convert: bool,
) -> None:
    x, w, ws, ref = _gemv_case(m, 40, 160, dtype, "cpu")
    out = fp8_gemv(x, w, ws, num_splits=splits, blocks=blocks, dot=dot, bit_convert=bit_convert)
    assert_close(out, ref, dtype)


@gpu_test
@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp8_gemv_gpu(m: int, dtype: torch.dtype) -> None:
    x, w, ws, ref = _gemv_case(m, 4096 + 64, 4096, dtype, "cuda")
    assert_close(fp8_gemv(x, w, ws), ref, dtype)
    assert_close(fp8_gemv(x, w, ws, dot=True), ref, dtype)
    for bit_convert in (False, True):
        out = fp8_gemv(x, w, ws, blocks=(1, 64, 128, 4), dot=False, bit_convert=bit_convert)
        assert_close(out, ref, dtype)


def test_bit_convert_is_exact_for_every_e4m3_value() -> None:
    """All 256 codes (subnormals, +-0, NaN aside) through the FMA path's bit placement."""
    codes = torch.arange(256, dtype=torch.uint8).view(FP8)
    w = codes[~codes.float().isnan()].reshape(-1, 1).contiguous()  # [254, 1]: K = 1
    x = torch.ones(1, 1)
    out = fp8_gemv(x, w, torch.ones(w.shape[0]), blocks=(1, 16, 16, 4), dot=False, bit_convert=True)
    assert torch.equal(out[0], w.float()[:, 0])


@gpu_test
@pytest.mark.parametrize("m,k", [(1, 4096), (16, 4096), (512, 14336), (3, 100)])
@pytest.mark.parametrize("static", [False, True])
def test_quantize_per_tensor_gpu(m: int, k: int, static: bool) -> None:
    _check_quant(m, k, torch.bfloat16, "cuda", static, None)
