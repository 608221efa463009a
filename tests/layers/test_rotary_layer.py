"""RotaryEmbedding's CPU paths: the in-place float32 rotation and the per-step cos/sin
rows shared by every layer, against the plain reference."""

from __future__ import annotations

import torch

from pagedllm.layers.rotary import RotaryEmbedding


def rotary_embedding_ref(*args: object) -> None:
    # Imported when a test runs, after collection: tests/kernels/conftest.py must set
    # TRITON_INTERPRET before anything imports triton (a triton_* module does).
    from pagedllm.layers.kernels.triton_rotary import rotary_embedding_ref as ref

    ref(*args)  # type: ignore[arg-type]


def _qkv(num_tokens: int, seed: int) -> torch.Tensor:
    return torch.randn(num_tokens, (4 + 2 + 2) * 32, generator=torch.Generator().manual_seed(seed))


def _expected(rope: RotaryEmbedding, positions: torch.Tensor, qkv: torch.Tensor):
    q = qkv[:, : 4 * 32].clone().view(-1, 4, 32)
    k = qkv[:, 4 * 32 : 6 * 32].clone().view(-1, 2, 32)
    rotary_embedding_ref(positions, q, k, rope.cos_sin_cache, rope.is_neox_style)
    return q.view(len(positions), -1), k.view(len(positions), -1)


def test_float32_neox_rotates_in_place_exactly() -> None:
    rope = RotaryEmbedding(32, 32, 512, 10000.0)
    qkv = _qkv(5, 0)
    v_before = qkv[:, 6 * 32 :].clone()
    positions = torch.tensor([0, 3, 17, 200, 511])
    want_q, want_k = _expected(rope, positions, qkv)
    q, k = rope(positions, qkv[:, : 4 * 32], qkv[:, 4 * 32 : 6 * 32])
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    # In place: the fused projection output now holds the rotated q and k.
    assert torch.equal(qkv[:, : 4 * 32], want_q)
    assert torch.equal(qkv[:, 6 * 32 :], v_before)


def test_step_rows_follow_the_positions() -> None:
    rope = RotaryEmbedding(32, 32, 512, 10000.0)
    positions = torch.tensor([1, 2])
    for _ in range(2):  # a second layer of the same step reuses the rows
        qkv = _qkv(2, 1)
        want = _expected(rope, positions, qkv)
        assert torch.equal(rope(positions, qkv[:, :128], qkv[:, 128:192])[0], want[0])
    positions.copy_(torch.tensor([40, 41]))  # a buffer refilled in place: new rows
    qkv = _qkv(2, 2)
    want = _expected(rope, positions, qkv)
    assert torch.equal(rope(positions, qkv[:, :128], qkv[:, 128:192])[0], want[0])
    other = torch.tensor([7, 9])  # another tensor
    qkv = _qkv(2, 3)
    want = _expected(rope, other, qkv)
    assert torch.equal(rope(other, qkv[:, :128], qkv[:, 128:192])[0], want[0])


def test_partial_and_gptj_rotation_keep_the_copying_path() -> None:
    for rope in (RotaryEmbedding(32, 16, 64, 10000.0), RotaryEmbedding(32, 32, 64, 10000.0, False)):
        qkv = _qkv(3, 4)
        before = qkv.clone()
        positions = torch.tensor([1, 5, 9])
        q, _ = rope(positions, qkv[:, :128], qkv[:, 128:192])
        want_q, _ = _expected(rope, positions, qkv)
        torch.testing.assert_close(q, want_q)
        assert torch.equal(qkv, before)  # not in place


def test_inference_mode_positions_are_cached_by_identity() -> None:
    rope = RotaryEmbedding(32, 32, 512, 10000.0)
    with torch.inference_mode():
        for positions in (torch.tensor([3, 4]), torch.tensor([5, 6])):  # two steps
            for layer in range(2):
                qkv = _qkv(2, 10 + layer)
                want = _expected(rope, positions, qkv)
                assert torch.equal(rope(positions, qkv[:, :128], qkv[:, 128:192])[0], want[0])
