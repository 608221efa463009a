"""When the small-batch experts path (kernels/triton_fused_moe_small.py) runs, and with
which tiles: measured on an H200 at the Qwen3-30B-A3B expert shape (E=128, top 8,
H=2048, I=768, bf16) by scripts/gpu_moe_small_sweep.py, which prints this module's
values to paste here.

A batch of T tokens takes the small path when its T*k (token, expert) pairs are at most
SMALL_MAX_PAIRS, and the tiles of the smallest key >= T (the largest key beyond the
table): they depend on T only, so each CUDA graph (one per batch size) has fixed ones.
"""

from __future__ import annotations

from pagedllm.layers.quantization import kernel_table

GateUpTile = tuple[int, int, int, int]  # BLOCK_N, BLOCK_K, num_warps, num_stages
DownTile = tuple[int, int, int, int, int]  # BLOCK_N, BLOCK_K, num_warps, num_stages, splits
SmallTiles = tuple[GateUpTile, DownTile]

# From `scripts/gpu_moe_small_sweep.py --write` on an H200, 2026-12-01 13:38 (docs/benchmarks.md).
SMALL_MAX_PAIRS = 128
SMALL_TILES: dict[int, SmallTiles] = {
    1: ((8, 256, 2, 3), (16, 256, 2, 3, 4)),
    2: ((8, 256, 2, 3), (16, 256, 2, 3, 1)),
    4: ((8, 256, 2, 3), (16, 256, 2, 3, 1)),
    8: ((8, 256, 2, 3), (32, 256, 4, 3, 1)),
    16: ((16, 128, 2, 3), (16, 256, 2, 3, 1)),
}


def use_small_path(num_tokens: int, top_k: int) -> bool:
    return num_tokens * top_k <= SMALL_MAX_PAIRS


def pick(num_tokens: int) -> SmallTiles:
    """The tiles of the smallest key >= num_tokens (the largest key beyond the table)."""
    return kernel_table.pick(SMALL_TILES, num_tokens)
