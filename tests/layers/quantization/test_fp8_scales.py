"""FP8 weight scales after loading: one scale for the whole weight where that is exact
(or, with requantize, for fused per-tensor shards), per-row scales otherwise."""

from __future__ import annotations

import torch

from pagedllm.layers.quantization.fp8 import (
    FP8,
    quantize_per_tensor,
    to_per_tensor,
)


def _shards(scales: list[float], rows: int = 8, k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(len(scales))
    q = (torch.randn(rows * len(scales), k, generator=gen) * 100).clamp(-448, 448).to(FP8)
    scale = torch.tensor(scales).repeat_interleave(rows).reshape(-1, 1)
    return q, scale


def test_equal_scales_become_one_scale_exactly() -> None:
    q, scale = _shards([0.02, 0.02])
    q2, tensor_scale = to_per_tensor(q, scale)
    assert tensor_scale is not None and tensor_scale.shape == ()
    assert torch.equal(q2.float() * tensor_scale, q.float() * scale)


def test_shard_scales_stay_per_row_unless_requantized() -> None:
    q, scale = _shards([0.02, 0.018, 0.015])
    assert to_per_tensor(q, scale, requantize=False)[1] is None
    q2, tensor_scale = to_per_tensor(q, scale, requantize=True)
    assert tensor_scale is not None and float(tensor_scale) == float(scale.max())
    before, after = q.float() * scale, q2.float() * tensor_scale
    assert torch.equal(after[:8], before[:8])  # the largest shard is untouched
    # e4m3 re-rounding: within 1/16 relative (plus the subnormal step near zero)
    bound = before.abs() / 16 + 2.0**-9 * float(tensor_scale)
    assert ((after - before).abs() <= bound).all()


def test_per_channel_scales_are_kept() -> None:
    q, scale = _shards([0.01 + 0.001 * i for i in range(8)], rows=2)
    assert to_per_tensor(q, scale, requantize=True)[1] is None


def test_online_quantization_is_per_tensor() -> None:
    w = torch.randn(16, 32)
    q, scale = quantize_per_tensor(w)
    assert scale.shape == () and q.dtype == FP8
    assert float(q.float().abs().max()) == 448.0
    assert ((q.float() * scale - w).abs() <= w.abs() / 16 + 2.0**-9 * scale).all()
