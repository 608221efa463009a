"""Sliding windows and logit soft-caps (Gemma 2/3, Mistral) in the Triton paged attention
kernels and backend, against the torch attention backend (the one oracle): prefill (whole
prompts, chunks after a cached prefix, decodes in the batch) and split-K decode. Windows
are shorter than the contexts and cross KV blocks; each case also checks that the option
changes the result, so a kernel that ignored it would fail."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test
from paged_cases import (
    PagedCase,
    assert_empty_sequences_give_zeros,
    make_paged_case,
    paged_metadata,
    run_decode,
    run_prefill,
    torch_attention,
)

from pagedllm.layers.attention.triton_backend import TritonAttentionBackend
from pagedllm.layers.kernels.triton_decode_attention import decode_attention
from pagedllm.layers.kernels.triton_prefill_attention import prefill_attention

Options = tuple[int | None, float | None]  # (sliding_window, soft_cap)


def _check_options(out: torch.Tensor, case: PagedCase, options: Options, causal: bool) -> None:
    """out matches the oracle with the options, and the options changed the result."""
    assert_close(out, torch_attention(case, causal, *options), case.query.dtype)
    plain = torch_attention(case, causal)
    assert not torch.allclose(out.float(), plain.float(), atol=1e-3)


def _check_prefill(
    seq_lens: list[int],
    query_lens: list[int],
    options: Options,
    num_heads: int = 8,
    num_kv_heads: int = 2,
    head_dim: int = 64,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    causal: bool = True,
    block_m: int = 64,
    block_n: int = 64,
) -> None:
    case = make_paged_case(
        seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, device
    )
    # Large scores, so that the soft-cap bites (tanh far from linear).
    case.scale = 2.0 * head_dim**-0.5
    out = run_prefill(case, causal, *options, block_m=block_m, block_n=block_n)
    _check_options(out, case, options, causal)


# A whole prompt, a chunk after a cached prefix (prefix-cache hit / chunked prefill),
# a decode token in the batch, a padded sequence; lengths off the block size.
MIXED = ([45, 90, 23, 0], [45, 33, 1, 0])
OPTIONS = [(7, None), (20, None), (1, None), (None, 1.5), (13, 2.0)]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2)])
def test_prefill_window_and_soft_cap(options: Options, num_heads: int, num_kv_heads: int) -> None:
    _check_prefill(*MIXED, options, num_heads, num_kv_heads)


@pytest.mark.parametrize("options", [(5, None), (17, 3.0)])
def test_prefill_window_small_tiles_odd_blocks(options: Options) -> None:
    # Many query tiles and key steps, so tiles past the first start their loop mid-sequence
    # (blocks left of the window skipped); block_size 5 puts window edges inside blocks;
    # GROUP 3 padded to 4; head_dim 80.
    _check_prefill([70, 33], [50, 33], options, 9, 3, 80, 5, block_m=16, block_n=16)


def test_prefill_window_shorter_than_query_tile() -> None:
    # 64 query rows per tile, 16 keys per step, window 4: the tile's last rows see no key
    # in the loop's first steps (their running max stays -inf there).
    _check_prefill([100, 64], [100, 40], (4, None), 4, 4, 64, 16, block_m=64, block_n=16)


def test_prefill_non_causal_window() -> None:
    # One-sided like the torch backend: keys > q - W, also right of the query.
    _check_prefill([40, 21], [40, 21], (6, 1.0), 4, 2, 64, 16, causal=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_window_16bit(dtype: torch.dtype) -> None:
    _check_prefill(*MIXED, (11, 4.0), 8, 2, 64, 16, dtype)


def test_window_wider_than_context_is_plain() -> None:
    case = make_paged_case(*MIXED, 8, 2, 64, 16, torch.float32, "cpu")
    assert_close(run_prefill(case, sliding_window=1000), torch_attention(case), torch.float32)


def _check_decode(
    seq_lens: list[int],
    options: Options,
    num_splits: int,
    num_heads: int = 8,
    num_kv_heads: int = 2,
    head_dim: int = 64,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    block_n: int = 16,
) -> None:
    case = make_paged_case(
        seq_lens, [1] * len(seq_lens), num_heads, num_kv_heads, head_dim, block_size, dtype, device
    )
    case.scale = 2.0 * head_dim**-0.5
    out = run_decode(case, num_splits, *options, block_n=block_n)
    _check_options(out, case, options, causal=True)
    assert_empty_sequences_give_zeros(out, case)


# A padded row (0), a sequence shorter than every window, lengths off the block size.
DECODE_LENS = [37, 0, 130, 5, 64]


@pytest.mark.parametrize("options", OPTIONS + [(50, None)])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_window_and_soft_cap(options: Options, num_splits: int) -> None:
    _check_decode(DECODE_LENS, options, num_splits)


def test_decode_window_more_splits_than_tiles() -> None:
    # Window 24 = 2 key steps of 16 over 6 splits: most splits are empty.
    _check_decode([200, 25, 3], (24, 2.5), 6, 4, 1, 64, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_window_16bit(dtype: torch.dtype) -> None:
    _check_decode(DECODE_LENS, (19, 3.0), 2, 8, 2, 64, 16, dtype)


@pytest.mark.parametrize("bad", [{"sliding_window": 0}, {"soft_cap": 0.0}, {"soft_cap": -1.0}])
def test_bad_options_are_refused(bad: dict[str, float]) -> None:
    case = make_paged_case([9], [1], 4, 2, 64, 16, torch.float32, "cpu")
    args = (case.query, case.kv_cache, case.block_tables, case.seq_lens)
    with pytest.raises(ValueError):
        decode_attention(*args, case.scale, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        prefill_attention(*args, case.query_start_loc, 1, case.scale, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "seq_lens,query_lens", [MIXED, ([40, 17, 130], [1, 1, 1]), ([30, 75], [30, 20])]
)
@pytest.mark.parametrize("options", [(9, None), (None, 2.0), (6, 1.5)])
def test_backend_matches_torch_backend(
    seq_lens: list[int], query_lens: list[int], options: Options
) -> None:
    window, soft_cap = options
    case = make_paged_case(seq_lens, query_lens, 8, 2, 64, 16, torch.float32, "cpu")
    out = TritonAttentionBackend(decode_num_splits=2).forward(
        case.query, case.kv_cache, paged_metadata(case), case.scale, True, window, soft_cap
    )
    _check_options(out, case, options, causal=True)


@gpu_test
@pytest.mark.parametrize("options", [(4096, None), (512, 10.0), (None, 10.0), (1024, None)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_window_and_soft_cap_gpu(options: Options, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    query_lens = torch.randint(1, 700, (12,), generator=gen).tolist() + [1, 1, 0]
    prefixes = torch.randint(0, 5000, (15,), generator=gen).tolist()
    seq_lens = [q + p if q else 0 for q, p in zip(query_lens, prefixes)]
    _check_prefill(seq_lens, query_lens, options, 16, 8, 128, 16, dtype, "cuda")
    decode_lens = torch.randint(1, 9000, (40,), generator=gen).tolist() + [0, 1]
    for num_splits in (1, 7):
        _check_decode(decode_lens, options, num_splits, 32, 8, 128, 16, dtype, "cuda", 64)


@gpu_test
def test_windowed_decode_cuda_graph_replay() -> None:
    """Capture a windowed, soft-capped decode step; replay with other lengths."""
    seq_lens = [3000, 41, 1000, 7, 0, 0]
    case = make_paged_case(seq_lens, [1] * 6, 16, 8, 128, 16, torch.bfloat16, "cuda")
    metadata = paged_metadata(case)
    backend = TritonAttentionBackend()
    opts = {"sliding_window": 256, "soft_cap": 20.0}
    backend.forward(case.query, case.kv_cache, metadata, case.scale, **opts)  # compile first
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(case.query, case.kv_cache, metadata, case.scale, **opts)
    case.seq_lens.copy_(torch.tensor([5, 400, 2999, 0, 300, 0], dtype=torch.int32))
    case.query.copy_(torch.randn_like(case.query))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, torch_attention(case, True, 256, 20.0), torch.bfloat16)
