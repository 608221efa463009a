"""The fused CPU decode ops (layers/cpu/decode_ops.cpp) against their torch references,
and the layers that use them against the torch path (PAGEDLLM_CPU_DECODE_OPS=0's)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.layers.activation import silu_and_mul_native
from pagedllm.layers.attention.torch_backend import write_kv_cache
from pagedllm.layers.cpu.decode_ops import decode_ops
from pagedllm.layers.layernorm import rms_norm_native

ops = decode_ops()
pytestmark = pytest.mark.skipif(ops is None, reason="no AVX2 CPU or no compiler")
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows,n", [(1, 576), (3, 100), (2, 7)])
def test_rms_norm_and_residual_add(rows: int, n: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(rows, n, generator=g), torch.randn(rows, n, generator=g)
    w = torch.randn(n, generator=g)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), rms_norm_native(x, w, 1e-5), **TOL)
    out, summed = ops.add_rms_norm(x, r, w, 1e-5)
    torch.testing.assert_close(summed, x + r, atol=0, rtol=0)
    torch.testing.assert_close(out, rms_norm_native(x + r, w, 1e-5), **TOL)


def test_rms_norm_on_a_strided_view() -> None:
    x = torch.randn(2, 64)
    w = torch.randn(32)
    view = x[:, 16:48]  # row stride 64
    torch.testing.assert_close(ops.rms_norm(view, w, 1e-6), rms_norm_native(view, w, 1e-6), **TOL)


def _rotate_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, d: int):
    x = x.view(x.shape[0], -1, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    c, s = cos[:, None], sin[:, None]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(1)


def test_rotary_neox_in_place_on_qkv_views() -> None:
    d, heads, kv_heads, tokens = 64, 9, 3, 5
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * d)
    q, k, _ = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    cos_sin = torch.randn(100, d)
    positions = torch.tensor([0, 7, 99, 3, 3])
    cos, sin = cos_sin[positions].chunk(2, dim=-1)
    want_q, want_k = _rotate_reference(q, cos, sin, d), _rotate_reference(k, cos, sin, d)
    v_before = qkv[:, (heads + kv_heads) * d :].clone()
    ops.rotary_neox_(positions, q, k, cos_sin, d)
    torch.testing.assert_close(q, want_q, **TOL)
    torch.testing.assert_close(k, want_k, **TOL)
    assert torch.equal(qkv[:, (heads + kv_heads) * d :], v_before)  # v untouched
    with pytest.raises(RuntimeError, match="position"):
        ops.rotary_neox_(torch.tensor([100]), q[:1], k[:1], cos_sin, d)


@pytest.mark.parametrize("shape", [(1, 3072), (4, 22)])
def test_silu_and_mul(shape: tuple[int, int]) -> None:
    x = torch.randn(*shape) * 4
    torch.testing.assert_close(ops.silu_and_mul(x), silu_and_mul_native(x), **TOL)


def _cache(blocks: int, block_size: int, kv_heads: int, d: int) -> torch.Tensor:
    return torch.randn(2, blocks, block_size, kv_heads, d)


def test_write_kv_matches_the_torch_writer() -> None:
    cache = _cache(6, 4, 3, 16)
    want = cache.clone()
    key, value = torch.randn(5, 3, 16), torch.randn(5, 3, 16)
    slots = torch.tensor([3, -1, 22, 0, 9])
    write_kv_cache(key, value, want, slots)
    ops.write_kv(key, value, cache, slots)
    assert torch.equal(cache, want)
    with pytest.raises(RuntimeError, match="slot"):
        ops.write_kv(key[:1], value[:1], cache, torch.tensor([24]))


def _reference_decode(query, cache, tables, seq_lens, scale):
    heads, kv_heads = query.shape[1], cache.shape[3]
    block_size = cache.shape[2]
    out = torch.zeros_like(query)
    for b, length in enumerate(seq_lens.tolist()):
        if length == 0:
            continue
        pos = torch.arange(length)
        slots = tables[b].long()[pos // block_size] * block_size + pos % block_size
        k = cache[0].flatten(0, 1)[slots].transpose(0, 1)[None]  # [1, KH, L, D]
        v = cache[1].flatten(0, 1)[slots].transpose(0, 1)[None]
        q = query[b].view(1, heads, 1, -1)
        got = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
        out[b] = got.view(heads, -1)
    assert heads % kv_heads == 0
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_attention_over_a_paged_cache(threads: int) -> None:
    torch.manual_seed(0)
    cache = _cache(12, 4, 3, 16)
    tables = torch.tensor(
        [[5, 2, 9, 0], [1, 0, 0, 0], [3, 4, 6, 7], [0, 0, 0, 0]], dtype=torch.int32
    )
    seq_lens = torch.tensor([11, 3, 16, 0], dtype=torch.int32)
    query = torch.randn(4, 9, 16)
    want = _reference_decode(query, cache, tables, seq_lens, 0.25)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = ops.decode_attention(query, cache, tables, seq_lens, 0.25)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, want, **TOL)
    assert not got[3].any()  # no keys: zeros
    with pytest.raises(RuntimeError, match="seq_len"):
        ops.decode_attention(
            query[:1], cache, tables[:1], torch.tensor([17], dtype=torch.int32), 1.0
        )


def test_layers_match_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """RMSNorm, SiluAndMul and the rotary module give the torch ops' results with the
    fused ops on and off."""
    from pagedllm.layers import activation, layernorm, rotary
    from pagedllm.layers.activation import SiluAndMul
    from pagedllm.layers.layernorm import RMSNorm
    from pagedllm.layers.rotary import get_rope

    norm = RMSNorm(576, 1e-5)
    norm.weight.data.normal_()
    rope = get_rope(64, 64, 2048, 10000.0, True)
    x, r, gu = torch.randn(2, 576), torch.randn(2, 576), torch.randn(2, 64)
    qkv = torch.randn(2, 15 * 64)
    positions = torch.tensor([5, 700])

    def run() -> list[torch.Tensor]:
        q, k = qkv.clone().split([9 * 64, 6 * 64], dim=-1)
        q, k = rope(positions, q, k)
        return [norm(x), *norm(x, r), SiluAndMul()(gu), q, k]

    fused = run()
    for module in (layernorm, activation, rotary):
        monkeypatch.setattr(module.decode_ops, "usable", lambda x: None)
    for got, want in zip(fused, run(), strict=True):
        torch.testing.assert_close(got, want, **TOL)
