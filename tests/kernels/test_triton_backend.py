"""TritonAttentionBackend end to end against the torch attention backend: write_kv then
forward, decode-only and mixed steps, padded for CUDA graphs (seq_len 0, slot -1, rows
past num_actual_tokens)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test
from paged_cases import make_paged_case, paged_metadata, slot_mapping_of, torch_attention

from pagedllm.layers.attention.torch_backend import write_kv_cache
from pagedllm.layers.attention.triton_backend import TritonAttentionBackend


def _run(
    seq_lens: list[int],
    query_lens: list[int],
    extra_rows: int,
    dtype: torch.dtype,
    device: str,
    num_heads: int = 8,
    num_kv_heads: int = 2,
    head_dim: int = 64,
    causal: bool = True,
) -> None:
    case = make_paged_case(
        seq_lens,
        query_lens,
        num_heads,
        num_kv_heads,
        head_dim,
        16,
        dtype,
        device,
        extra_query_rows=extra_rows,
    )
    num_rows = case.query.shape[0]
    num_actual = num_rows - extra_rows
    gen = torch.Generator().manual_seed(7)
    key = torch.randn(num_rows, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
    value = torch.randn(num_rows, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
    slot_mapping = slot_mapping_of(case, query_lens, num_rows)
    metadata = paged_metadata(case, slot_mapping, num_actual)

    ref_cache = case.kv_cache.clone()
    backend = TritonAttentionBackend()
    backend.write_kv(key, value, case.kv_cache, slot_mapping)
    write_kv_cache(key, value, ref_cache, slot_mapping)
    assert torch.equal(case.kv_cache, ref_cache)
    out = backend.forward(case.query, case.kv_cache, metadata, case.scale, causal=causal)
    assert_close(out, torch_attention(case, causal), dtype)
    assert torch.equal(out[num_actual:], torch.zeros_like(out[num_actual:]))


def test_backend_decode_padded_for_cuda_graph() -> None:
    # 3 real decodes and 2 padded sequences (seq_len 0; their rows get slot -1 and zeros).
    _run([40, 17, 130, 0, 0], [1, 1, 1, 1, 1], 0, torch.float32, "cpu")


def test_backend_decode_extra_rows() -> None:
    _run([40, 17], [1, 1], 2, torch.float32, "cpu")


def test_backend_mixed_step_with_padding() -> None:
    # A prompt, a chunk after a cached prefix, two decodes; 3 padded rows past T.
    _run([30, 75, 9, 50], [30, 20, 1, 1], 3, torch.float32, "cpu")


def test_backend_non_causal() -> None:
    _run([21, 12], [21, 12], 0, torch.float32, "cpu", causal=False)


def test_backend_bf16_gqa4() -> None:
    _run([33, 64, 5], [33, 16, 1], 0, torch.bfloat16, "cpu", num_heads=8, num_kv_heads=2)


def test_backend_rejects_bad_splits() -> None:
    with pytest.raises(ValueError):
        TritonAttentionBackend(decode_num_splits=0)


@gpu_test
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backend_gpu(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    decode_lens = torch.randint(1, 2000, (64,), generator=gen).tolist()
    _run(decode_lens + [0] * 8, [1] * 72, 0, dtype, "cuda", 32, 8, 128)
    _run([700, 1500] + decode_lens[:30], [700, 300] + [1] * 30, 5, dtype, "cuda", 16, 8, 128)


@gpu_test
def test_backend_decode_cuda_graph_replay() -> None:
    """Capture one decode step, change seq_lens and queries in place, replay: the graph
    must follow the new lengths (no host-side values baked in beyond num_splits)."""
    seq_lens = [300, 41, 1000, 7, 0, 0]
    case = make_paged_case(seq_lens, [1] * 6, 16, 8, 128, 16, torch.bfloat16, "cuda")
    metadata = paged_metadata(case)
    backend = TritonAttentionBackend(decode_num_splits=4)
    backend.forward(case.query, case.kv_cache, metadata, case.scale)  # compile outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(case.query, case.kv_cache, metadata, case.scale)
    case.seq_lens.copy_(torch.tensor([5, 40, 999, 0, 300, 0], dtype=torch.int32))
    case.query.copy_(torch.randn_like(case.query))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, torch_attention(case), torch.bfloat16)
