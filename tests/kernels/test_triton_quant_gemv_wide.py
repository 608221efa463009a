"""The bandwidth-shaped decode GEMV (triton_quant_gemv_wide) against the exact product:
CPU under the Triton interpreter with small shapes (group sizes 32/64/128, 1..4 rows, odd
column tails, asymmetric zeros, split-K through the one-launch counter sum), real shapes
on CUDA (and, marked slow, on the CPU).

The kernel accumulates in float32 from unrounded weights, so it is compared with the exact
product (float64) and a tolerance of its one rounding to the output dtype, not with
packed_matmul_ref for bf16: that rounds W to bf16 first (the GEMM's semantics), up to
2^-9 relative per weight, up to 1.3 absolute at 8 bits on outputs of ~60 (the CUDA test
failed against that reference in 2026-12, not on the kernel's arithmetic)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pagedllm.layers.quantization.int_packing import dequantize_ref, pack_rows, packed_matmul_ref

K_REAL, N_REAL = 4096, 1024 + 64  # the CUDA test's shape (Llama-like K, an odd N tail)


def _case(bits: int, group: int, k: int, n: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(bits * 1000 + group + n)
    codes = torch.randint(0, 2**bits, (k, n), generator=g, dtype=torch.int32)
    groups = k // group
    return {
        "qweight": pack_rows(codes, bits).to(device),
        "scales": (torch.rand(groups, n, generator=g) / 50 + 1e-3).half().to(device),
        "zeros": torch.randint(0, 2**bits, (groups, n), generator=g).half().to(device),
    }


def _exact(x: torch.Tensor, *args: object) -> torch.Tensor:
    """x @ W^T in float64 from the unrounded weights (what a float32 kernel approximates)."""
    qweight, bits, group, scales, zeros = args
    w = dequantize_ref(qweight, bits, scales, zeros, None, group)  # type: ignore[arg-type]
    return x.double() @ w.double()


def _tolerance(dtype: torch.dtype, device: str) -> dict[str, float]:
    """float32: accumulation order. bf16: the output's one rounding, at most half an ulp
    (2^-8 relative) on CUDA; the interpreter casts by truncation (a whole ulp)."""
    if dtype == torch.float32:
        return {"rtol": 1e-4, "atol": 1e-3}
    return {"rtol": 2.0**-8 if device == "cuda" else 2.0**-7, "atol": 1e-3}


def _check(
    bits: int, group: int, m: int, k: int, n: int, device: str, dtype: torch.dtype, **kw: object
) -> torch.Tensor:
    from pagedllm.layers.kernels.triton_quant_gemv_wide import quant_gemv_wide

    case = _case(bits, group, k, n, device)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype).to(device)
    args = (case["qweight"], bits, group, case["scales"], case["zeros"])
    got = quant_gemv_wide(x, *args, **kw)
    assert got.dtype == x.dtype and got.shape == (m, n)
    torch.testing.assert_close(got.double(), _exact(x, *args), **_tolerance(dtype, device))
    return got


@pytest.mark.parametrize(
    ("bits", "group", "m", "n", "blocks", "splits"),
    [
        (4, 128, 1, 48, (1, 32, 128, 4), 2),  # split-K over two groups
        (4, 32, 3, 40, (4, 32, 128, 4), 3),  # four one-group sub-tiles per K tile, N tail
        (4, 64, 2, 72, (2, 32, 64, 4), 1),  # no split: direct store
        (4, 64, 4, 33, (2, 16, 256, 4), 4),  # two row tiles, odd N
        (8, 32, 1, 24, (1, 16, 64, 4), 2),  # 8-bit codes
        (4, 256, 2, 40, (2, 32, 64, 4), None),  # K tile inside one large group, split by SMs
    ],
)
def test_wide_gemv_matches_reference_cpu(
    bits: int, group: int, m: int, n: int, blocks: tuple[int, int, int, int], splits: int | None
) -> None:
    _check(bits, group, m, 256, n, "cpu", torch.float32, num_splits=splits, blocks=blocks)


@pytest.mark.slow
@pytest.mark.parametrize(("bits", "group", "m"), [(8, 128, 3), (4, 32, 4)])
def test_wide_gemv_real_shape_bf16_cpu(bits: int, group: int, m: int) -> None:
    """The CUDA test's shape, dtype and inputs under the interpreter (one column tile for
    speed, ~16 splits through the counter sum): 8-bit codes and 32-row groups."""
    _check(bits, group, m, K_REAL, N_REAL, "cpu", torch.bfloat16, blocks=(4, 2048, 256, 4))


def test_wide_gemv_counters_reset_and_sum_is_deterministic_cpu() -> None:
    from pagedllm.layers.kernels import triton_quant_gemv_wide as wide

    kw = {"num_splits": 4, "blocks": (1, 32, 64, 4)}
    first = _check(4, 64, 2, 256, 64, "cpu", torch.float32, **kw)
    assert int(wide.counters(torch.device("cpu"), 1).abs().sum()) == 0
    assert torch.equal(first, _check(4, 64, 2, 256, 64, "cpu", torch.float32, **kw))


def test_k_tiles_fit_the_group() -> None:
    from pagedllm.layers.kernels.triton_quant_gemv_wide import k_tiles

    assert k_tiles(256, 128, 4) == (256, 128)
    assert k_tiles(256, 32, 4) == (256, 32)
    assert k_tiles(128, 4096, 4) == (128, 128)
    assert k_tiles(256, 96, 4) == (32, 32)
    assert k_tiles(256, 20, 4) is None


@pytest.mark.parametrize(("wide_rows", "gemv_rows", "m"), [(4, 1, 3), (0, 4, 2), (1, 1, 2)])
def test_decode_gemv_dispatch_by_kernel_table_cpu(
    monkeypatch: pytest.MonkeyPatch, wide_rows: int, gemv_rows: int, m: int
) -> None:
    from pagedllm.layers.kernels import triton_quant_gemv_wide as wide
    from pagedllm.layers.quantization import kernel_table
    from pagedllm.layers.quantization.packed_linear import decode_gemv

    monkeypatch.setattr(kernel_table, "INT_GEMV_WIDE_MAX_ROWS", wide_rows)
    monkeypatch.setattr(kernel_table, "INT_GEMV_MAX_ROWS", gemv_rows)
    monkeypatch.setattr(
        kernel_table, "INT_GEMV_WIDE_TILES", {1: (1, 32, 64, 4, 2), 4: (4, 32, 64, 4, 2)}
    )
    monkeypatch.setattr(wide, "_COUNTERS", {})  # the wide kernel's launcher fills it
    case = _case(4, 64, 128, 40, "cpu")
    x = torch.randn(m, 128, generator=torch.Generator().manual_seed(5))
    args = (case["qweight"], 4, 64, case["scales"], case["zeros"])
    got = decode_gemv(x, *args)
    if m > max(wide_rows, gemv_rows):
        assert got is None
        return
    assert got is not None
    torch.testing.assert_close(got, packed_matmul_ref(x, *args), rtol=1e-4, atol=1e-3)
    assert bool(wide._COUNTERS) == (m <= wide_rows)


@pytest.mark.slow
def test_sweep_script_smoke_mode_int(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[2] / "scripts" / "gpu_quant_sweep.py"
    spec = importlib.util.spec_from_file_location("gpu_quant_sweep", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--smoke", "--only", "int"])
    out = capsys.readouterr().out
    assert "INT_GEMV_WIDE_TILES: dict[int, Tile] = {" in out
    assert "INT_GEMV_WIDE_MAX_ROWS =" in out and "INT_GEMV_WIDE_STAGES =" in out
    assert "WRONG" not in out and "Error" not in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("bits", "group"), [(4, 128), (4, 64), (4, 32), (8, 128)])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_wide_gemv_matches_reference_cuda(bits: int, group: int, m: int) -> None:
    got = _check(bits, group, m, K_REAL, N_REAL, "cuda", torch.bfloat16)
    again = _check(bits, group, m, K_REAL, N_REAL, "cuda", torch.bfloat16)
    assert torch.equal(got, again)  # the split sum runs in a fixed order
