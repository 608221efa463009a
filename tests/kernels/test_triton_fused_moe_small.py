"""The small-batch experts path (no sort, one program per pair and column block) against
the torch loop over experts; the dispatch between it and the grouped GEMMs; the GPU
sweep script's CPU smoke mode. Small odd shapes: every tile has masked rows/columns."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.fused_moe import fused_moe, small_tiles
from pagedllm.layers.fused_moe.moe_torch import fused_experts_torch
from pagedllm.layers.fused_moe.router import select_experts

HIDDEN, INTER = 37, 23  # odd: masked K tails and column tails in both GEMMs
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_moe_small_sweep.py"


def _case(
    tokens: int, experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype, dev: str
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(tokens * 131 + experts * 7 + top_k)
    x = torch.randn(tokens, hidden, generator=gen)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, generator=gen) / inter**0.5
    logits = torch.randn(tokens, experts, generator=gen)
    weights, ids = select_experts(logits, top_k, renormalize=top_k > 1)
    return tuple(t.to(dev) for t in (x.to(dtype), w13.to(dtype), w2.to(dtype), weights, ids))


def _small(case: tuple[torch.Tensor, ...], splits: int, block: int = 16) -> torch.Tensor:
    from pagedllm.layers.kernels.triton_fused_moe_small import fused_experts_small

    tiles = ((block, 16, 4, 1), (block, 16, 4, 1, splits))
    return fused_experts_small(*case, tiles=tiles)


def _ref(case: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return fused_experts_torch(*(t.cpu() for t in case))


@pytest.mark.parametrize("tokens", [1, 2, 3, 5])
@pytest.mark.parametrize("top_k,splits", [(1, 1), (2, 2), (8, 3)])  # 3: uneven 3+3+2
def test_small_path_float32_matches_torch_loop(tokens: int, top_k: int, splits: int) -> None:
    case = _case(tokens, 8 + 2 * tokens, top_k, HIDDEN, INTER, torch.float32, "cpu")
    torch.testing.assert_close(_small(case, splits), _ref(case), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tokens,top_k,splits", [(1, 8, 1), (3, 2, 2), (5, 8, 4)])
def test_small_path_bfloat16_close_to_torch_loop(tokens: int, top_k: int, splits: int) -> None:
    case = _case(tokens, 16, top_k, HIDDEN, INTER, torch.bfloat16, "cpu")
    out = _small(case, splits, block=8)
    assert out.dtype == torch.bfloat16
    assert_close(out, _ref(case), torch.bfloat16)


def test_small_path_rejects_mismatched_shapes() -> None:
    x, w13, w2, weights, ids = _case(2, 8, 2, HIDDEN, INTER, torch.float32, "cpu")
    with pytest.raises(ValueError, match="shapes"):
        _small((x, w13, w2[:, :, :-1].contiguous(), weights, ids), 1)
    with pytest.raises(ValueError, match="contiguous"):
        _small((x, w13.transpose(1, 2), w2, weights, ids), 1)


def _spy(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    """Record which path fused_experts_triton takes (each still runs for real)."""
    import pagedllm.layers.kernels.triton_fused_moe_small as small_mod

    real_small, real_grouped = small_mod.fused_experts_small, fused_moe.fused_experts_grouped

    def small(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append("small")
        return real_small(*args, **kwargs)  # type: ignore[arg-type]

    def grouped(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append("grouped")
        return real_grouped(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(small_mod, "fused_experts_small", small)
    monkeypatch.setattr(fused_moe, "fused_experts_grouped", grouped)


def test_dispatch_threshold_picks_small_path_for_few_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(small_tiles, "SMALL_MAX_PAIRS", 6)
    monkeypatch.setattr(small_tiles, "SMALL_TILES", {4: ((16, 16, 4, 1), (16, 16, 4, 1, 2))})
    calls: list[str] = []
    _spy(monkeypatch, calls)
    for tokens in (1, 3, 4):  # 2, 6 pairs: small; 8 pairs: the grouped GEMMs
        case = _case(tokens, 8, 2, HIDDEN, INTER, torch.float32, "cpu")
        out = fused_moe.fused_experts_triton(*case)
        torch.testing.assert_close(out, _ref(case), atol=1e-4, rtol=1e-4)
    assert calls == ["small", "small", "grouped"]


def test_threshold_counts_pairs_and_pick_takes_the_next_key() -> None:
    most = small_tiles.SMALL_MAX_PAIRS
    assert small_tiles.use_small_path(most // 8, 8) == (most >= 8)
    assert not small_tiles.use_small_path(most // 8 + 1, 8)
    assert not small_tiles.use_small_path(most + 1, 1)
    keys = sorted(small_tiles.SMALL_TILES)
    assert small_tiles.pick(1) == small_tiles.SMALL_TILES[keys[0]]
    assert small_tiles.pick(keys[-1] + 1) == small_tiles.SMALL_TILES[keys[-1]]
    if len(keys) > 1:
        assert small_tiles.pick(keys[0] + 1) == small_tiles.SMALL_TILES[keys[1]]


def test_sweep_script_smoke_mode(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("gpu_moe_small_sweep", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--smoke"])
    out = capsys.readouterr().out
    assert "SMALL_TILES: dict[int, SmallTiles] = {" in out
    assert "SMALL_MAX_PAIRS =" in out
    assert "WRONG" not in out


@gpu_test
@pytest.mark.parametrize("tokens", [1, 2, 4, 8, 16])
def test_small_path_gpu_qwen3_moe_shape(tokens: int) -> None:
    """The Qwen3-30B-A3B expert shape in bf16 with the table's tiles for this T."""
    from pagedllm.layers.kernels.triton_fused_moe_small import fused_experts_small

    case = _case(tokens, 128, 8, 2048, 768, torch.bfloat16, "cuda")
    out = fused_experts_small(*case, tiles=small_tiles.pick(tokens))
    assert_close(out.cpu(), _ref(case), torch.bfloat16)
