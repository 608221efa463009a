"""The decode-row kernel for packed integer weights against the torch reference
(int_packing.packed_matmul_ref; CPU under the Triton interpreter, real shapes on CUDA)."""

from __future__ import annotations

import pytest
import torch

from pagedllm.layers.quantization.int_packing import pack_rows, packed_matmul_ref


def _case(bits: int, group: int, k: int, n: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(bits * 1000 + group)
    codes = torch.randint(0, 2**bits, (k, n), generator=g, dtype=torch.int32)
    groups = k // group
    return {
        "qweight": pack_rows(codes, bits).to(device),
        "scales": (torch.rand(groups, n, generator=g) / 50).half().to(device),
        "zeros": torch.randint(0, 2**bits, (groups, n), generator=g).half().to(device),
    }


def _check(bits: int, group: int, m: int, k: int, n: int, device: str, **kw: object) -> None:
    from pagedllm.layers.kernels.triton_quant_gemv import quant_gemv

    case = _case(bits, group, k, n, device)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(device)
    args = (case["qweight"], bits, group, case["scales"], case["zeros"])
    expected = packed_matmul_ref(x, *args)
    got = quant_gemv(x, *args, **kw)
    torch.testing.assert_close(got.float(), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("bits", "group", "m", "splits"),
    [(4, 128, 1, 2), (4, 32, 3, 1), (8, 64, 2, 3), (4, 256, 5, None)],
)
def test_gemv_matches_reference_cpu(bits: int, group: int, m: int, splits: int | None) -> None:
    _check(bits, group, m, 256, 48, "cpu", num_splits=splits, blocks=(2, 32, 64, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("bits", "group"), [(4, 128), (4, 64), (4, 32), (8, 128)])
@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_gemv_matches_reference_cuda(bits: int, group: int, m: int) -> None:
    _check(bits, group, m, 4096, 1024 + 64, "cuda")
