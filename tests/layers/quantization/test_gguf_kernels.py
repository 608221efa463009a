"""GGUF block repacking against gguf-py's numpy dequantizers, and the packed CPU
kernel against the dequantized reference matmul."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants
from gguf_checkpoint import K_QUANT_BYTES, _k_quant_blocks

from pagedllm.layers.quantization import gguf_kernels
from pagedllm.layers.quantization.gguf import merge_parts
from pagedllm.layers.quantization.gguf_kernels import gguf_linear, reference_linear
from pagedllm.layers.quantization.gguf_repack import PackedGGUF, dequantize, repack

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
N, K = 48, 512


def _raw(name: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name in K_QUANT_BYTES:
        return _k_quant_blocks(rng, N, K, name)
    w = rng.standard_normal((N, K)).astype(np.float32)
    return quants.quantize(w, GGMLQuantizationType[name])


def _packed(name: str, seed: int = 0) -> tuple[PackedGGUF, torch.Tensor]:
    raw = _raw(name, seed)
    ref = quants.dequantize(raw, GGMLQuantizationType[name])
    packed = repack(torch.from_numpy(raw.copy()), int(GGMLQuantizationType[name]))
    return packed, torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))


def _on_int8_grid(m: int, seed: int, k: int = K) -> torch.Tensor:
    """x whose per-32 int8 quantization is exact: integers in [-127, 127] (each
    block holding +-127) times a power-of-two scale per block."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (m, k // 32, 32), generator=g).float()
    q[:, :, 0] = 127.0
    scale = 2.0 ** torch.randint(-8, -2, (m, k // 32, 1), generator=g).float()
    return (q * scale).reshape(m, k)


@pytest.mark.parametrize("name", TYPES)
def test_repack_equals_gguf_dequantize(name: str) -> None:
    packed, ref = _packed(name)
    assert packed.shape == (N, K)
    assert torch.equal(dequantize(packed), ref)


# packed bytes / GGUF bytes: Q4_0 stores -8d as a min; 5/6-bit values widen to
# int8; K-quant scales (d * sub-block scale) are float32 to stay exact.
MAX_RATIO = {"Q4_0": 1.12, "Q4_1": 1.0, "Q8_0": 1.0, "Q4_K": 1.34, "Q5_0": 1.55, "Q5_1": 1.5}
MAX_RATIO |= {"Q5_K": 1.82, "Q6_K": 1.53}


@pytest.mark.parametrize("name", TYPES)
def test_packed_bytes_near_the_file(name: str) -> None:
    packed, _ = _packed(name)
    nbytes = sum(t.numel() * t.element_size() for t in (packed.qweight, packed.scales))
    nbytes += 0 if packed.mins is None else packed.mins.numel() * packed.mins.element_size()
    assert nbytes <= MAX_RATIO[name] * _raw(name).nbytes


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("m", [1, 3, 4, 9])
def test_kernel_exact_on_int8_grid_activations(name: str, m: int) -> None:
    """With x already on the int8 grid the kernel's only error is float rounding."""
    if gguf_kernels.cpu_extension() is None:
        pytest.skip("the GGUF CPU kernel cannot be built here")
    packed, ref = _packed(name, seed=m)
    x = _on_int8_grid(m, seed=m)
    expected = x.double() @ ref.double().T
    got = gguf_linear(x, packed)
    assert got.shape == (m, N) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


@pytest.mark.parametrize("name", TYPES)
def test_kernel_close_on_random_activations(name: str) -> None:
    """Random x: the per-32 int8 activation quantization costs < 2% (relative)."""
    packed, ref = _packed(name)
    x = torch.randn(5, K, generator=torch.Generator().manual_seed(1))
    expected = x @ ref.T
    got = gguf_linear(x, packed)
    assert ((got - expected).norm() / expected.norm()).item() < 0.02


def test_reference_path_and_bias() -> None:
    packed, ref = _packed("Q4_K")
    x = torch.randn(3, K, dtype=torch.float64)
    bias = torch.randn(N, dtype=torch.float64)
    torch.testing.assert_close(reference_linear(x, packed, bias), x @ ref.double().T + bias)
    y = gguf_linear(x.float(), packed, bias.float())  # the kernel adds the bias too
    torch.testing.assert_close(y.double(), x @ ref.double().T + bias, rtol=0.05, atol=0.5)


def test_merge_parts_concatenates_same_layouts_only() -> None:
    a, ref_a = _packed("Q4_0")
    b, ref_b = _packed("Q4_1")  # same layout as Q4_0: 4 bits, f16 scales and mins
    c, ref_c = _packed("Q6_K")
    merged = merge_parts([a, b, c])
    assert len(merged) == 2
    first = merged[0]
    assert isinstance(first, PackedGGUF) and first.shape == (2 * N, K)
    assert torch.equal(dequantize(first), torch.cat([ref_a, ref_b]))
    assert merged[1] is c


@pytest.mark.parametrize("name", TYPES)
def test_a_row_gives_the_same_bits_in_any_batch(name: str) -> None:
    """Tiles (1-2 rows of x) and panels (3+) sum in one order, at every row count: a
    request's logits do not depend on what else is in the step (greedy tokens then do
    not either), and many rows stay close to the dequantized reference."""
    packed, ref = _packed(name)
    x = torch.randn(130, K, generator=torch.Generator().manual_seed(2))
    alone = torch.cat([gguf_linear(x[i : i + 1], packed) for i in range(x.shape[0])])
    for m in (2, 3, 4, 7, 64, 128, 130):
        assert torch.equal(gguf_linear(x[:m], packed), alone[:m]), m
    torch.testing.assert_close(alone.double(), x.double() @ ref.double().T, rtol=0.05, atol=0.5)


# 4 bits with float16 scales and mins (Q4_1, Q4_0), 8 bits without mins (Q8_0), 8 bits
# in groups of 16 (Q6_K), float32 scales with mins at 4 and 8 bits (Q4_K, Q5_K).
TAIL_TYPES = ["Q4_1", "Q8_0", "Q4_0", "Q6_K", "Q4_K", "Q5_K"]


@pytest.mark.parametrize("name", TAIL_TYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 6, 7, 33])
@pytest.mark.parametrize("n", [1, 7, 46])
def test_kernel_row_tails(name: str, m: int, n: int) -> None:
    """Weight row counts that the 4- and 2-row tiles and the 4-row panels do not
    divide, rows of x that the 2-row tiles do not divide (from 3 rows the panel
    kernel runs), and (legacy types) K = 576: 18 blocks, not a multiple of the 8
    scales converted at once."""
    if gguf_kernels.cpu_extension() is None:
        pytest.skip("the GGUF CPU kernel cannot be built here")
    k = K if name in K_QUANT_BYTES else 576
    rng = np.random.default_rng(n)
    if name in K_QUANT_BYTES:
        raw = _k_quant_blocks(rng, n, k, name)
    else:
        w = rng.standard_normal((n, k)).astype(np.float32)
        raw = quants.quantize(w, GGMLQuantizationType[name])
    packed = repack(torch.from_numpy(raw.copy()), int(GGMLQuantizationType[name]))
    x = _on_int8_grid(m, seed=m, k=k)
    expected = x.double() @ dequantize(packed).double().T
    got = gguf_linear(x, packed)
    assert got.shape == (m, n)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


@pytest.mark.parametrize("name", ["Q4_1", "Q5_1"])
@pytest.mark.parametrize("blocks", [17, 18, 19, 20, 21, 24])
@pytest.mark.parametrize("m", [1, 2])
def test_min_terms_of_every_block_tail(name: str, blocks: int, m: int) -> None:
    """The min terms (float16 mins . x's block sums) take 8 blocks at a time, then the
    last blocks by masked loads (pairs of float16) or, for an odd count, one by one:
    every tail length from 1 to 5 and none."""
    if gguf_kernels.cpu_extension() is None:
        pytest.skip("the GGUF CPU kernel cannot be built here")
    k, n = 32 * blocks, 9
    w = np.random.default_rng(blocks).standard_normal((n, k)).astype(np.float32)
    raw = quants.quantize(w, GGMLQuantizationType[name])
    packed = repack(torch.from_numpy(raw.copy()), int(GGMLQuantizationType[name]))
    assert packed.mins is not None and packed.mins.dtype == torch.float16
    x = _on_int8_grid(m, seed=blocks, k=k)
    expected = x.double() @ dequantize(packed).double().T
    got = gguf_linear(x, packed)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


@pytest.mark.parametrize("name", TYPES)
def test_panel_kernel_matches_one_row_at_a_time(name: str) -> None:
    """From 3 rows of x the panel kernel runs: the same int8 x and integer dot
    products as the batch-1 tiles, so only the float summation order differs."""
    if gguf_kernels.cpu_extension() is None:
        pytest.skip("the GGUF CPU kernel cannot be built here")
    packed, _ = _packed(name, seed=3)
    x = torch.randn(11, K, generator=torch.Generator().manual_seed(3))
    rows = torch.cat([gguf_linear(x[i : i + 1], packed) for i in range(x.shape[0])])
    torch.testing.assert_close(
        gguf_linear(x, packed), rows, rtol=1e-5, atol=1e-5 * rows.abs().max()
    )
