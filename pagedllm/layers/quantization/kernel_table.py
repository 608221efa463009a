"""Which quantized-matmul kernel (and tile) runs for how many rows: one table for the
packed integer methods (AWQ, GPTQ) and FP8, measured on an H200 by
scripts/gpu_quant_sweep.py, which prints this module's values to paste here.

Tiles are (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, per_sm), per_sm the programs per SM
that split-K aims at; a row count m uses the entry of the smallest key >= m.
"""

from __future__ import annotations

from typing import TypeVar

Tile = tuple[int, int, int, int, int]  # BLOCK_M, BLOCK_N, BLOCK_K, num_warps, per_sm
_Entry = TypeVar("_Entry")

# Packed integer weights (K-packed int4/int8, triton_quant_gemv / triton_quant_gemm).
# Values from `scripts/gpu_quant_sweep.py` on an H200, 2026-12-01 07:52; the GEMV rows
# re-swept with prefetch (3 stages) at 16:36 (docs/benchmarks.md): at one row the GEMV
# (119.9 us over the four Llama-3.1-8B shapes) now beats the tensor-core kernel (130.1).
INT_GEMV_MAX_ROWS = 1  # rows up to which the FMA GEMV beats the tensor-core kernel
INT_GEMV_TILES: dict[int, Tile] = {
    1: (1, 64, 128, 4, 4),
    4: (2, 128, 128, 4, 4),
    8: (8, 32, 128, 4, 4),
    16: (16, 32, 128, 8, 4),
}
# Loads in flight in the GEMV's K loop (tl.range num_stages: without it Triton prefetches
# nothing in a loop without tl.dot); the 16:36 sweep ran with these.
INT_GEMV_STAGES = 3
# The bandwidth-shaped GEMV (triton_quant_gemv_wide: short split-K ranges, one-launch
# deterministic split sum) runs for rows up to INT_GEMV_WIDE_MAX_ROWS, before the GEMV
# above; 0 (off) until `scripts/gpu_quant_sweep.py --only int` has measured it on an H200.
INT_GEMV_WIDE_MAX_ROWS = 0
# Swept on the H200 (the sweep at 17:05, 2026-12-01): 77.5 us over the four
# Llama-3.1-8B shapes at one row against 120.8 for the GEMV above (1.50 TB/s of int4
# weight), the sweep's float32 check passing. Still 0 above: its CUDA test failed against
# a reference that rounds W to bf16 (the test now compares with the exact product, not yet
# re-run on a GPU) and L1 with it has not been measured; set 1 once both are in.
INT_GEMV_WIDE_TILES: dict[int, Tile] = {
    1: (1, 64, 256, 4, 32),
    4: (4, 64, 128, 4, 8),
}
INT_GEMV_WIDE_STAGES = 1
INT_GEMM_TILES: dict[int, Tile] = {
    1: (16, 128, 128, 4, 8),
    4: (16, 128, 128, 4, 8),
    8: (16, 128, 128, 4, 8),
    16: (16, 128, 128, 4, 8),
    64: (64, 256, 128, 8, 1),
    1 << 30: (128, 256, 128, 8, 1),
}
INT_GEMM_STAGES = 3
# From this many rows on, the weight is dequantized whole (triton_quant_dequant) and
# multiplied by cuBLAS: at 64 rows the fused kernel took 6x the bf16 matmul's time.
INT_DEQUANT_MIN_ROWS = 32

# FP8 (e4m3 weights): weight-only GEMV up to FP8_GEMV_MAX_ROWS rows (a tile with
# BLOCK_M >= 16 multiplies on tensor cores, else by FMA), above that activations are
# quantized per tensor and multiplied by torch._scaled_mm (the faster at 1 row too).
FP8_GEMV_MAX_ROWS = 0
FP8_GEMV_TILES: dict[int, Tile] = {
    1: (16, 64, 128, 4, 4),
    4: (16, 64, 128, 4, 4),
    8: (16, 64, 256, 4, 4),
    16: (16, 64, 256, 4, 4),
}
FP8_GEMV_STAGES = 3  # as INT_GEMV_STAGES
FP8_GEMV_BIT_CONVERT = False  # FMA tiles: e4m3 -> float32 by integer ops, not cvt
FP8_ACT_QUANT_TRITON = True  # triton_fp8.quantize_per_tensor, else its torch reference


def pick(table: dict[int, _Entry], m: int) -> _Entry:
    """The entry of the smallest key >= m (the largest key beyond the table); also the
    fused MoE small path's tile table (fused_moe/small_tiles.py)."""
    for key in sorted(table):
        if m <= key:
            return table[key]
    return table[max(table)]


def num_splits(programs: int, k_chunks: int, per_sm: int, sms: int, min_chunks: int = 2) -> int:
    """Split-K factor: about `per_sm` programs per SM, each at least `min_chunks` K tiles."""
    wanted = -(-per_sm * sms // max(programs, 1))
    return max(1, min(wanted, k_chunks // min_chunks))
