"""The dequantize-in-the-tile kernel (AWQ/GPTQ/SqueezeLLM after repacking) against the
torch reference dequantizer; small shapes (Triton interpreter on the CPU), and real
ones on the GPU."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.kernels.triton_quant_gemm import quant_gemm
from pagedllm.layers.quantization.int_packing import pack_rows, packed_matmul_ref


def _case(
    m: int, n: int, k: int, bits: int, group: int, mode: str, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, dict[str, object], torch.Tensor]:
    gen = torch.Generator().manual_seed(m + n + k + bits)
    codes = torch.randint(0, 2**bits, (k, n), generator=gen, dtype=torch.int32)
    groups = k // group
    args: dict[str, object] = {"qweight": pack_rows(codes, bits).to(device), "bits": bits}
    args["group_size"] = group
    if mode == "lut":
        args["lookup_table"] = torch.randn(n, 16, generator=gen).to(dtype).to(device)
    else:
        args["scales"] = (torch.rand(groups, n, generator=gen) / 8).to(dtype).to(device)
        args["zeros"] = torch.randint(0, 2**bits, (groups, n), generator=gen).to(dtype).to(device)
    if mode == "g_idx":  # an act-order shard: sorted, irregular groups
        args["g_idx"] = (
            torch.sort(torch.randint(0, groups, (k,), generator=gen)).values.int().to(device)
        )
    x = torch.randn(m, k, generator=gen).to(dtype).to(device)
    return x, args, packed_matmul_ref(x, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "m,bits,group,mode,splits,dtype",
    [
        (3, 4, 32, "affine", 2, torch.float32),  # decode rows, split-K, group == BLOCK_K
        (20, 8, 64, "affine", 1, torch.float32),  # 8-bit, several row blocks
        (2, 4, 16, "g_idx", 1, torch.bfloat16),  # per-row groups through g_idx
        (2, 4, 32, "lut", 3, torch.float16),  # SqueezeLLM table, ragged splits
    ],
)
def test_quant_gemm(
    m: int, bits: int, group: int, mode: str, splits: int, dtype: torch.dtype
) -> None:
    x, args, ref = _case(m, 48, 128, bits, group, mode, dtype, "cpu")
    out = quant_gemm(x, **args, num_splits=splits, blocks=(16, 32, 32, 4))  # type: ignore[arg-type]
    assert_close(out, ref, dtype)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="does not match"):
        quant_gemm(torch.randn(1, 64), torch.zeros(4, 8, dtype=torch.int32), 4, 32)
    with pytest.raises(ValueError, match="int32"):
        quant_gemm(torch.randn(1, 64), torch.zeros(8, 8, dtype=torch.int64), 4, 32)


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 7, 64, 300])
@pytest.mark.parametrize(
    "bits,group,mode", [(4, 128, "affine"), (8, 128, "affine"), (4, 128, "g_idx"), (4, 128, "lut")]
)
def test_quant_gemm_gpu(m: int, bits: int, group: int, mode: str, dtype: torch.dtype) -> None:
    x, args, ref = _case(m, 4096, 4096, bits, group, mode, dtype, "cuda")
    assert_close(quant_gemm(x, **args), ref, dtype)  # type: ignore[arg-type]
    if mode == "affine":  # codes through float32 instead of the 16-bit bit tricks
        assert_close(quant_gemm(x, **args, half_magic=False), ref, dtype)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "m,bits,group,dtype,half_magic,splits",
    [
        (3, 4, 128, torch.float32, True, 2),  # one dot per code slot, float32 codes
        (2, 4, 128, torch.float16, True, 1),  # float16 1024 + q codes
        (5, 4, 256, torch.bfloat16, True, 1),  # bfloat16 128 + q codes, group spans tiles
        (17, 8, 64, torch.float16, True, 2),  # 8-bit: float16 codes, two row blocks
        (2, 8, 64, torch.bfloat16, True, 1),  # 8-bit bfloat16: through float32
        (2, 4, 128, torch.float16, False, 1),  # codes through float32
    ],
)
def test_quant_gemm_code_slot_dots(
    m: int, bits: int, group: int, dtype: torch.dtype, half_magic: bool, splits: int
) -> None:
    block_k = 16 * 32 // bits
    x, args, ref = _case(m, 48, 256, bits, group, "affine", dtype, "cpu")
    out = quant_gemm(
        x,
        **args,  # type: ignore[arg-type]
        num_splits=splits,
        blocks=(16, 32, block_k, 4),
        half_magic=half_magic,
    )
    assert_close(out, ref, dtype)
