"""The tiles of the sorted grouped-GEMM experts path (kernels/triton_fused_moe.py) by
expert shape and token count, like vLLM's per-(E, N, device) fused-MoE config files:
measured on an H200 by `scripts/gpu_moe_grouped_sweep.py --write`, which rewrites
GROUPED_TILES below for the shape it swept (other shapes' entries are kept).

A batch of T tokens uses the entry of the smallest token key >= T (the largest key
beyond the table): tiles depend on T only, so each CUDA graph has fixed ones. Shapes
not in the table, and GPUs other than the one swept (compute capability), get
`default_tiles`. Both GEMMs of an entry share BLOCK_M: one moe_align_block_size serves
both.
"""

from __future__ import annotations

from pagedllm.layers.quantization import kernel_table

Tile = tuple[int, int, int, int, int, int]  # BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages
GroupedTiles = tuple[Tile, Tile]  # gate/up (SiLU fused), down
Shape = tuple[int, int, int, int]  # experts E, hidden H, intermediate I (per rank), top_k
TILE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")

# The compute capability the table was measured on (H100 / H200: sm_90).
TUNED_CAPABILITY = (9, 0)
SHARED_MEMORY_LIMIT = 232_448  # sm_90's opt-in shared memory per block, bytes
GROUPED_TILES: dict[Shape, dict[int, GroupedTiles]] = {
    (128, 2048, 768, 8): {
        16: ((16, 64, 128, 8, 4, 5), (16, 64, 128, 8, 4, 3)),
        32: ((16, 64, 128, 8, 4, 5), (16, 128, 128, 1, 4, 3)),
        64: ((16, 128, 128, 8, 4, 3), (16, 128, 128, 8, 4, 3)),
        128: ((16, 128, 128, 8, 4, 3), (16, 128, 128, 1, 4, 3)),
        256: ((32, 64, 128, 8, 4, 3), (32, 128, 128, 1, 4, 3)),
        512: ((64, 64, 64, 8, 4, 3), (64, 128, 64, 1, 4, 4)),
        1024: ((128, 128, 64, 1, 8, 4), (128, 256, 64, 1, 8, 4)),
        2048: ((128, 128, 64, 8, 8, 4), (128, 256, 64, 1, 8, 4)),
        4096: ((128, 128, 64, 8, 8, 4), (128, 256, 64, 8, 8, 4)),
        8192: ((128, 128, 64, 8, 8, 3), (128, 256, 64, 8, 8, 4)),
    },
}


def default_tiles(num_tokens: int, top_k: int, num_experts: int) -> GroupedTiles:
    """By rows per expert: few rows (decode) read each expert's weights once with
    16-row blocks; many rows (prefill) use big tiles for tensor-core throughput."""
    rows_per_expert = num_tokens * top_k / max(num_experts, 1)
    if rows_per_expert <= 16:
        tile: Tile = (16, 64, 128, 1, 4, 4)
    elif rows_per_expert <= 64:
        tile = (32, 128, 64, 8, 4, 4)
    else:
        tile = (64, 128, 64, 8, 8, 4)
    return tile, tile


def pick(
    num_tokens: int, shape: Shape, capability: tuple[int, int] | None = TUNED_CAPABILITY
) -> GroupedTiles:
    """The table's tiles for this shape and token count, else `default_tiles`."""
    table = GROUPED_TILES.get(shape) if capability == TUNED_CAPABILITY else None
    if not table:
        return default_tiles(num_tokens, shape[3], shape[0])
    return kernel_table.pick(table, num_tokens)


def fit_shared_memory(
    tile: Tile, elem_bytes: int, gated: bool, limit: int = SHARED_MEMORY_LIMIT
) -> Tile:
    """`tile` with fewer pipeline stages (down to 2), then a smaller BLOCK_K, until its
    operand buffers fit in `limit`: stages x (A tile + B tile, B twice for the gated
    gate/up GEMM) x element size, an upper bound of what Triton allocates. The table's
    bf16 entries fit as swept; the defaults for a float32 model may not."""
    bm, bn, bk, gm, warps, stages = tile

    def need(bk: int, stages: int) -> int:
        return stages * (bm * bk + (2 if gated else 1) * bk * bn) * elem_bytes

    while need(bk, stages) > limit and stages > 2:
        stages -= 1
    while need(bk, stages) > limit and bk > 16:
        bk //= 2
    return bm, bn, bk, gm, warps, stages


def as_config(tile: Tile) -> dict[str, int]:
    """The keyword arguments of invoke_fused_moe_kernel's `config`."""
    return dict(zip(TILE_KEYS, tile, strict=True))
