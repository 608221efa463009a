"""The torch attention backend against a naive per-sequence, per-token reference."""

from __future__ import annotations

import pytest
import torch

from pagedllm.layers.attention import Attention, AttentionMetadata, TorchAttentionBackend
from pagedllm.layers.attention.layer import needs_torch_attention
from pagedllm.layers.attention.torch_backend import attention_without_cache

NUM_BLOCKS = 64


def _make_case(
    q_lens: list[int],
    ctx_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random cache holding each sequence's first ctx_lens[i] tokens, plus new q/k/v.
    Returns (query, key, value, kv_cache, metadata) with key/value not yet written."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [q + c for q, c in zip(q_lens, ctx_lens)]
    blocks_needed = [-(-s // block_size) for s in seq_lens]
    perm = torch.randperm(NUM_BLOCKS, generator=gen).tolist()
    tables, start = [], 0
    for n in blocks_needed:
        tables.append(perm[start : start + n])
        start += n
    width = max(blocks_needed)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    shape = (2, NUM_BLOCKS, block_size, num_kv_heads, head_dim)
    kv_cache = torch.randn(shape, generator=gen).to(dtype)  # unrelated garbage everywhere
    slots = []
    for table, ctx, q in zip(tables, ctx_lens, q_lens):
        slots += [table[p // block_size] * block_size + p % block_size for p in range(ctx, ctx + q)]
    total = sum(q_lens)
    query = torch.randn(total, num_heads, head_dim, generator=gen).to(dtype)
    key = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype)
    value = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype)
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    meta = AttentionMetadata(
        num_actual_tokens=total,
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_start_loc=qsl,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc_cpu=qsl.clone(),
        seq_lens_cpu=torch.tensor(seq_lens, dtype=torch.int32),
    )
    return query, key, value, kv_cache, meta


def _reference(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    causal: bool,
    window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    block_size = kv_cache.shape[2]
    group = query.shape[1] // kv_cache.shape[3]
    out = torch.empty(query.shape, dtype=torch.float32)
    qsl = meta.query_start_loc.tolist()
    for i, seq_len in enumerate(meta.seq_lens.tolist()):
        table = meta.block_tables[i].tolist()
        slots = [table[p // block_size] * block_size + p % block_size for p in range(seq_len)]
        k = kv_cache[0].flatten(0, 1)[slots].float().repeat_interleave(group, dim=1)  # [S, H, D]
        v = kv_cache[1].flatten(0, 1)[slots].float().repeat_interleave(group, dim=1)
        q_len = qsl[i + 1] - qsl[i]
        for j in range(q_len):
            visible = seq_len - q_len + j + 1 if causal else seq_len
            first = max(0, visible - window) if window else 0  # keys p > q_pos - window
            q = query[qsl[i] + j].float()  # [H, D]
            scores = torch.einsum("hd,shd->hs", q, k[first:visible]) * scale
            if soft_cap is not None:
                scores = soft_cap * torch.tanh(scores / soft_cap)
            probs = scores.softmax(-1)
            out[qsl[i] + j] = torch.einsum("hs,shd->hd", probs, v[first:visible])
    return out


CASES = {
    "prefill": ([5, 9, 1], [0, 0, 0]),
    "chunked": ([4, 7], [6, 13]),
    "decode": ([1, 1, 1, 1], [3, 16, 30, 0]),
    "mixed": ([1, 8, 3, 1, 5], [20, 0, 9, 2, 0]),
    "single_decode": ([1], [37]),  # batch-1 decoding takes its own unpadded path
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_matches_reference(case: str, heads: tuple[int, int], block_size: int) -> None:
    q_lens, ctx_lens = CASES[case]
    num_heads, num_kv_heads = heads
    query, key, value, kv_cache, meta = _make_case(
        q_lens, ctx_lens, num_heads, num_kv_heads, 16, block_size
    )
    backend = TorchAttentionBackend()
    backend.write_kv(key, value, kv_cache, meta.slot_mapping)
    out = backend.forward(query, kv_cache, meta, scale=0.25)
    assert out.shape == query.shape and out.dtype == query.dtype
    torch.testing.assert_close(
        out, _reference(query, kv_cache, meta, 0.25, True), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("case", ["prefill", "mixed"])
def test_non_causal(case: str) -> None:
    q_lens, ctx_lens = CASES[case]
    query, key, value, kv_cache, meta = _make_case(q_lens, ctx_lens, 4, 2, 8, 4, seed=3)
    backend = TorchAttentionBackend()
    backend.write_kv(key, value, kv_cache, meta.slot_mapping)
    out = backend.forward(query, kv_cache, meta, scale=0.3, causal=False)
    torch.testing.assert_close(
        out, _reference(query, kv_cache, meta, 0.3, False), atol=1e-5, rtol=1e-5
    )


def test_write_kv_puts_tokens_in_their_slots_and_skips_negative_slots() -> None:
    kv_cache = torch.zeros(2, 4, 2, 1, 3)
    key = torch.arange(9, dtype=torch.float32).view(3, 1, 3) + 1
    value = -key
    slots = torch.tensor([5, -1, 0])
    TorchAttentionBackend().write_kv(key, value, kv_cache, slots)
    flat_k, flat_v = kv_cache[0].view(8, 1, 3), kv_cache[1].view(8, 1, 3)
    assert torch.equal(flat_k[5], key[0]) and torch.equal(flat_k[0], key[2])
    assert torch.equal(flat_v[5], value[0]) and torch.equal(flat_v[0], value[2])
    assert int((flat_k != 0).any(-1).sum()) == 2  # the -1 token wrote nothing


def test_padded_tokens_past_num_actual_tokens_are_ignored() -> None:
    query, key, value, kv_cache, meta = _make_case([3, 1], [0, 5], 4, 2, 8, 4, seed=5)
    pad = 2
    query_p = torch.cat([query, torch.randn(pad, 4, 8)])
    key_p, value_p = (
        torch.cat([key, torch.randn(pad, 2, 8)]),
        torch.cat([value, torch.randn(pad, 2, 8)]),
    )
    meta.slot_mapping = torch.cat([meta.slot_mapping, torch.full((pad,), -1)])
    backend = TorchAttentionBackend()
    before = kv_cache.clone()
    backend.write_kv(key_p, value_p, kv_cache, meta.slot_mapping)
    assert int((kv_cache != before).any(-1).sum()) == 2 * 4 * 2  # 4 new tokens, k and v, 2 heads
    out = backend.forward(query_p, kv_cache, meta, scale=0.5)
    assert out.shape == query_p.shape
    torch.testing.assert_close(
        out[:4], _reference(query, kv_cache, meta, 0.5, True), atol=1e-5, rtol=1e-5
    )


def test_bfloat16_softmax_in_float32() -> None:
    query, key, value, kv_cache, meta = _make_case(
        [6, 1], [0, 9], 4, 2, 16, 4, dtype=torch.bfloat16, seed=7
    )
    backend = TorchAttentionBackend()
    backend.write_kv(key, value, kv_cache, meta.slot_mapping)
    out = backend.forward(query, kv_cache, meta, scale=0.25)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.float(), _reference(query, kv_cache, meta, 0.25, True), atol=1e-2, rtol=1e-2
    )


@pytest.mark.parametrize("causal", [True, False])
def test_without_cache_matches_cached_prefill(causal: bool) -> None:
    query, key, value, kv_cache, meta = _make_case([5, 2, 7], [0, 0, 0], 6, 3, 8, 4, seed=9)
    backend = TorchAttentionBackend()
    backend.write_kv(key, value, kv_cache, meta.slot_mapping)
    cached = backend.forward(query, kv_cache, meta, scale=0.4, causal=causal)
    uncached = attention_without_cache(query, key, value, meta, scale=0.4, causal=causal)
    torch.testing.assert_close(uncached, cached, atol=1e-6, rtol=1e-6)


def test_attention_layer_writes_then_attends() -> None:
    query, key, value, kv_cache, meta = _make_case([3, 1], [0, 4], 4, 2, 8, 4, seed=11)
    layer = Attention(num_heads=4, head_dim=8, scale=0.35, num_kv_heads=2)
    out = layer(query.flatten(1), key.flatten(1), value.flatten(1), kv_cache, meta)
    assert out.shape == (4, 32)
    expected = _reference(query, kv_cache, meta, 0.35, True).flatten(1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_layer_rejects_indivisible_heads() -> None:
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        Attention(num_heads=6, head_dim=8, scale=1.0, num_kv_heads=4)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("window,soft_cap", [(5, None), (None, 2.0), (3, 1.5), (1, None)])
def test_sliding_window_and_soft_cap_match_reference(
    case: str, window: int | None, soft_cap: float | None
) -> None:
    q_lens, ctx_lens = CASES[case]
    query, key, value, kv_cache, meta = _make_case(q_lens, ctx_lens, 8, 2, 16, 4, seed=5)
    backend = TorchAttentionBackend()
    backend.write_kv(key, value, kv_cache, meta.slot_mapping)
    out = backend.forward(query, kv_cache, meta, 0.6, sliding_window=window, soft_cap=soft_cap)
    expected = _reference(query, kv_cache, meta, 0.6, True, window, soft_cap)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # The options change the result (the cases reach past the window / cap).
    plain = _reference(query, kv_cache, meta, 0.6, True)
    assert not torch.allclose(out, plain, atol=1e-3)


def test_without_cache_takes_window_and_soft_cap() -> None:
    query, key, value, kv_cache, meta = _make_case([9, 4], [0, 0], 4, 2, 8, 4, seed=13)
    backend = TorchAttentionBackend()
    backend.write_kv(key, value, kv_cache, meta.slot_mapping)
    cached = backend.forward(query, kv_cache, meta, 0.4, sliding_window=3, soft_cap=1.0)
    uncached = attention_without_cache(query, key, value, meta, 0.4, sliding_window=3, soft_cap=1.0)
    torch.testing.assert_close(uncached, cached, atol=1e-6, rtol=1e-6)


class _PlainOnlyBackend(TorchAttentionBackend):
    """A backend without the options: it must not be asked to attend (torch instead)."""

    name = "plain-only"
    supports_window_and_soft_cap = False

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("a windowed layer attended through a backend without windows")


def test_windowed_layer_falls_back_to_torch_backend() -> None:
    query, key, value, kv_cache, meta = _make_case([6, 1], [0, 9], 4, 2, 8, 4, seed=17)
    layer = Attention(4, 8, 0.35, 2, backend=_PlainOnlyBackend(), sliding_window=4)
    plain = Attention(4, 8, 0.35, 2, backend=_PlainOnlyBackend())
    assert layer.needs_torch_fallback and not plain.needs_torch_fallback
    assert needs_torch_attention(torch.nn.Sequential(plain, layer))
    assert not needs_torch_attention(torch.nn.Sequential(plain))
    out = layer(query.flatten(1), key.flatten(1), value.flatten(1), kv_cache, meta)
    expected = _reference(query, kv_cache, meta, 0.35, True, window=4).flatten(1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("soft_cap", [None, 2.0])
def test_sequence_without_keys_gives_zeros(soft_cap: float | None) -> None:
    # A padded decode entry (one query row, seq_len 0), as CUDA-graph padding makes them:
    # zeros like the Triton kernels, not NaN (the soft-capped softmax of no keys).
    query, key, value, kv_cache, meta = _make_case([1, 1, 1], [6, 0, 2], 4, 2, 8, 4, seed=19)
    TorchAttentionBackend().write_kv(key, value, kv_cache, meta.slot_mapping)
    meta.seq_lens = torch.tensor([7, 0, 3], dtype=torch.int32)
    meta.seq_lens_cpu = meta.seq_lens.clone()
    out = TorchAttentionBackend().forward(query, kv_cache, meta, 0.5, soft_cap=soft_cap)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    expected = _reference(query, kv_cache, meta, 0.5, True, soft_cap=soft_cap)
    torch.testing.assert_close(out[[0, 2]], expected[[0, 2]], atol=1e-5, rtol=1e-5)
