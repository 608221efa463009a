"""The fused MoE path (align + two grouped GEMMs + SiLU-and-mul) against the torch loop
over experts, and moe_align_block_size's layout. Small shapes: the interpreter is slow."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from kernel_cases import assert_close, gpu_test

from pagedllm.layers.fused_moe.moe_align_block_size import moe_align_block_size
from pagedllm.layers.fused_moe.moe_torch import fused_experts_torch
from pagedllm.layers.fused_moe.router import select_experts

_SMALL = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=1)


def _case(
    tokens: int, experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype, dev: str
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(tokens * 31 + experts)
    x = torch.randn(tokens, hidden, generator=gen)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, generator=gen) / inter**0.5
    logits = torch.randn(tokens, experts, generator=gen)
    weights, ids = select_experts(logits, top_k, renormalize=True)
    return tuple(t.to(dev) for t in (x.to(dtype), w13.to(dtype), w2.to(dtype), weights, ids))


def _check(case: tuple[torch.Tensor, ...], dtype: torch.dtype, config: dict | None) -> None:
    from pagedllm.layers.fused_moe.fused_moe import fused_experts_triton

    x, w13, w2, weights, ids = case
    out = fused_experts_triton(x, w13, w2, weights, ids, config)
    ref = fused_experts_torch(x.cpu(), w13.cpu(), w2.cpu(), weights.cpu(), ids.cpu())
    assert_close(out.cpu(), ref, dtype)


@pytest.mark.parametrize(
    "tokens,experts,top_k,hidden,inter,dtype",
    [
        (7, 4, 2, 32, 48, torch.float32),  # inter not a multiple of BLOCK_N/BLOCK_K
        (20, 8, 3, 64, 32, torch.bfloat16),  # several blocks per expert, unused experts
    ],
)
def test_fused_experts_match_torch_loop(
    tokens: int, experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype
) -> None:
    _check(_case(tokens, experts, top_k, hidden, inter, dtype, "cpu"), dtype, _SMALL)


def test_align_pads_each_expert_to_whole_blocks() -> None:
    ids = torch.tensor([[2, 0], [2, 5], [0, 2]], dtype=torch.int32)  # pairs 0..5
    sorted_ids, expert_ids, num_post = moe_align_block_size(ids, 4, 6)
    pad = 6
    # expert 0: pairs 1, 4; expert 2: pairs 0, 2, 5; expert 5: pair 3 -> three blocks.
    assert sorted_ids[:12].tolist() == [1, 4, pad, pad, 0, 2, 5, pad, 3, pad, pad, pad]
    assert (sorted_ids[12:] == pad).all() and sorted_ids.numel() == 6 + 6 * 3
    assert expert_ids[:3].tolist() == [0, 2, 5]
    assert (expert_ids[3:] == 6).all()  # past num_tokens_post_padded: skipped
    assert num_post.tolist() == [12]


@gpu_test
@pytest.mark.parametrize("tokens", [1, 8, 300, 4096])
def test_fused_experts_gpu_qwen3_moe_shape(tokens: int) -> None:
    """The Qwen3-30B-A3B expert shape (128 experts, top 8, H 2048, I 768) in bf16."""
    _check(_case(tokens, 128, 8, 2048, 768, torch.bfloat16, "cuda"), torch.bfloat16, None)


def test_grouped_tiles_table_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's entry of the smallest token key >= T for its shape and GPU; the
    default tiles for another shape or capability."""
    from pagedllm.layers.fused_moe import grouped_tiles as gt

    small = (16, 64, 64, 1, 4, 3)
    big = (64, 128, 64, 8, 8, 4)
    shape = (128, 2048, 768, 8)
    monkeypatch.setitem(gt.GROUPED_TILES, shape, {32: (small, small), 1024: (big, big)})
    assert gt.pick(20, shape) == (small, small)
    assert gt.pick(33, shape) == (big, big)
    assert gt.pick(10**6, shape) == (big, big)
    assert gt.pick(20, shape, capability=(8, 0)) == gt.default_tiles(20, 8, 128)
    assert gt.pick(20, (64, 2048, 768, 8)) == gt.default_tiles(20, 8, 64)
    assert gt.as_config(big)["BLOCK_N"] == 128 and gt.as_config(big)["num_stages"] == 4


def test_tiles_fit_shared_memory_for_float32_and_keep_swept_ones() -> None:
    """A float32 model's default tiles lose stages (then BLOCK_K) until their operand
    buffers fit sm_90's 227 KB: the gated gate/up at 64-row blocks asked 240 KB on the
    H200 before (OutOfResources); the swept bf16 entries are left as they are."""
    from pagedllm.layers.fused_moe import grouped_tiles as gt

    def need(tile: gt.Tile, size: int, gated: bool) -> int:
        bm, bn, bk, _, _, stages = tile
        return stages * (bm * bk + (2 if gated else 1) * bk * bn) * size

    big = gt.default_tiles(8192, 8, 8)[0]
    assert need(big, 4, True) > gt.SHARED_MEMORY_LIMIT
    fitted = gt.fit_shared_memory(big, 4, gated=True)
    assert need(fitted, 4, True) <= gt.SHARED_MEMORY_LIMIT and fitted[5] >= 2
    assert fitted[:2] == big[:2] and fitted[3:5] == big[3:5]
    assert need(gt.fit_shared_memory(big, 4, True, limit=50_000), 4, True) <= 50_000
    for table in gt.GROUPED_TILES.values():
        for gate_up, down in table.values():
            assert gt.fit_shared_memory(gate_up, 2, gated=True) == gate_up
            assert gt.fit_shared_memory(down, 2, gated=False) == down


def test_grouped_tiles_entries_share_block_m() -> None:
    """One moe_align_block_size serves both GEMMs: every entry has one BLOCK_M."""
    from pagedllm.layers.fused_moe import grouped_tiles as gt

    entries = [e for table in gt.GROUPED_TILES.values() for e in table.values()]
    entries += [gt.default_tiles(t, 8, 128) for t in (1, 256, 1024, 8192)]
    for gate_up, down in entries:
        assert gate_up[0] == down[0], (gate_up, down)


def test_grouped_path_per_gemm_configs() -> None:
    """Different N/K tiles per GEMM (same BLOCK_M), as the table gives them."""
    from pagedllm.layers.fused_moe.fused_moe import grouped_down, grouped_gate_up

    x, w13, w2, weights, ids = _case(9, 4, 2, 32, 40, torch.float32, "cpu")
    align = moe_align_block_size(ids, 16, 4)
    other = dict(_SMALL, BLOCK_N=16, BLOCK_K=16, GROUP_M=1)
    act = grouped_gate_up(x, w13, align, 2, other)
    out = grouped_down(act, w2, weights, align, _SMALL).view(9, 2, -1).sum(dim=1)
    assert_close(out, fused_experts_torch(x, w13, w2, weights, ids), torch.float32)


SWEEP = Path(__file__).resolve().parents[2] / "scripts" / "gpu_moe_grouped_sweep.py"


def _sweep_script() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_moe_grouped_sweep", SWEEP)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_grouped_sweep_smoke_mode(capsys: pytest.CaptureFixture[str]) -> None:
    _sweep_script().main(["--smoke"])
    out = capsys.readouterr().out
    assert "GROUPED_TILES: dict[Shape, dict[int, GroupedTiles]] = {" in out
    assert "(4, 32, 32, 2): {" in out and "WRONG" not in out


def test_grouped_sweep_writes_a_table_pick_reads(tmp_path: Path) -> None:
    """--write's rewrite of grouped_tiles.py (twice: from `{}` and from a table)."""
    from pagedllm.layers.fused_moe import grouped_tiles

    script = _sweep_script()
    copy = tmp_path / "grouped_tiles.py"
    copy.write_text(Path(grouped_tiles.__file__).read_text())
    script.gt = types.SimpleNamespace(__file__=str(copy))
    tile = (32, 64, 64, 8, 4, 3)
    for table in ({(8, 64, 32, 2): {4: (tile, tile)}}, {(8, 64, 32, 2): {64: (tile, tile)}}):
        script.write_table(script.table_source(table))
        spec = importlib.util.spec_from_file_location("written_tiles", copy)
        assert spec is not None and spec.loader is not None
        written = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(written)
        assert written.GROUPED_TILES == table
        assert written.pick(5, (8, 64, 32, 2)) == (tile, tile)
