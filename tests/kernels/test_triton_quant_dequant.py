"""Whole-weight dequantization (the many-rows path of AWQ/GPTQ) against the torch
reference dequantizer."""

from __future__ import annotations

import pytest
import torch

from pagedllm.layers.quantization.int_packing import dequantize_ref, pack_rows


def _check(bits: int, group: int, k: int, n: int, gidx: bool, device: str) -> None:
    from pagedllm.layers.kernels.triton_quant_dequant import dequantize_packed

    gen = torch.Generator().manual_seed(bits + group + n)
    codes = torch.randint(0, 2**bits, (k, n), generator=gen, dtype=torch.int32)
    groups = k // group
    qweight = pack_rows(codes, bits).to(device)
    scales = (torch.rand(groups, n, generator=gen) / 50).half().to(device)
    zeros = torch.randint(0, 2**bits, (groups, n), generator=gen).half().to(device)
    g_idx = None
    if gidx:  # sorted but irregular groups (an act-order shard)
        g_idx = torch.sort(torch.randint(0, groups, (k,), generator=gen)).values.int().to(device)
    expected = dequantize_ref(qweight, bits, scales, zeros, g_idx, group)
    got = dequantize_packed(qweight, bits, group, scales, zeros, torch.float32, g_idx)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    half = dequantize_packed(qweight, bits, group, scales, zeros, torch.float16, g_idx)
    torch.testing.assert_close(half, expected.half())


@pytest.mark.parametrize(("bits", "group", "gidx"), [(4, 32, False), (8, 64, False), (4, 16, True)])
def test_dequantize_matches_reference_cpu(bits: int, group: int, gidx: bool) -> None:
    _check(bits, group, 128, 136, gidx, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("bits", "group", "gidx"), [(4, 128, False), (8, 128, False), (4, 128, True)]
)
def test_dequantize_matches_reference_cuda(bits: int, group: int, gidx: bool) -> None:
    _check(bits, group, 4096, 1024 + 64, gidx, "cuda")
