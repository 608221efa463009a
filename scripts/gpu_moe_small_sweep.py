"""Sweep of the small-batch experts path (kernels/triton_fused_moe_small.py) against the
grouped-GEMM path at the Qwen3-30B-A3B expert shape (E=128, top 8, H=2048, I=768, bf16,
random routing) on CUDA, for T = 1..32 tokens. About 1-2 minutes on an H200, compiles
included (about 40 Triton variants).

Each GEMM's candidate tiles are timed alone (gate/up + SiLU, then down with its expert
split S); the best pair is then timed end to end against the grouped path. Every
candidate is first checked end to end against the grouped path (relative error).
LAYERS copies of the weights (and of the routing) are cycled in the CUDA graph, so the
50 MB L2 never holds the next call's experts, as in a real decode step. Prints (a) per
T: grouped us, best small us, GB/s of the distinct experts' weight bytes, best tiles;
(b) pagedllm/layers/fused_moe/small_tiles.py's values to paste; (c) the crossover.

    PYTHONPATH=$PWD python3 scripts/gpu_moe_small_sweep.py [--json out.json]
    PYTHONPATH=$PWD python3 scripts/gpu_moe_small_sweep.py --smoke   # CPU interpreter
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sweep_common
if "--smoke" in sys.argv:  # before triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from sweep_common import (  # noqa: E402
    Call,
    graph_time_us,
    log,
    rel_err,
    replace_literal,
)

from pagedllm.layers.fused_moe import small_tiles  # noqa: E402
from pagedllm.layers.fused_moe.fused_moe import fused_experts_grouped  # noqa: E402
from pagedllm.layers.fused_moe.small_tiles import DownTile as Down  # noqa: E402
from pagedllm.layers.fused_moe.small_tiles import GateUpTile as GateUp  # noqa: E402
from pagedllm.layers.kernels import triton_fused_moe_small as small  # noqa: E402

E, TOP_K, H, INTER = 128, 8, 2048, 768
TOKENS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
LAYERS = 4
DTYPE, DEVICE = torch.bfloat16, "cuda"
REL_TOL = 2e-2
CALLS = 200  # timed calls per figure (graph replays x calls per graph)
Args = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _fits(block_n: int, block_k: int, warps: int, accumulators: int) -> bool:
    """At most 64 float32 accumulator registers per thread: ptxas (sm_90a) then uses
    about 120 registers in all; at 128 accumulators it takes 206-254 registers."""
    return accumulators * block_n * block_k <= 64 * 32 * warps


# BLOCK_N, BLOCK_K, warps at 3 stages, then a few stage counts (1: no prefetch).
GATE_UP: list[GateUp] = [
    (bn, bk, w, 3) for bn in (8, 16, 32) for bk in (128, 256) for w in (2, 4) if _fits(bn, bk, w, 2)
] + [(16, 256, 4, 1), (16, 256, 4, 2), (16, 256, 4, 4), (8, 256, 4, 1), (32, 128, 4, 1)]
DOWN_TILES: list[tuple[int, int, int, int]] = [
    (bn, bk, 4, 3) for bn in (16, 32, 64) for bk in (64, 128, 256) if _fits(bn, bk, 4, 1)
] + [(16, 128, 2, 3), (16, 256, 2, 3), (32, 128, 4, 1), (32, 128, 4, 2), (32, 128, 4, 4)]
SPLITS = (1, 2, 4, 8)


class Problem:
    """LAYERS sets of expert weights and, per T, inputs and random distinct routing."""

    def __init__(self) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(0)

        def rand(*shape: int, scale: float) -> torch.Tensor:
            return (torch.randn(*shape, generator=gen, device=DEVICE) * scale).to(DTYPE)

        self.w13 = [rand(E, 2 * INTER, H, scale=H**-0.5) for _ in range(LAYERS)]
        self.w2 = [rand(E, H, INTER, scale=INTER**-0.5) for _ in range(LAYERS)]
        self.inputs: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        for t in TOKENS:
            self.inputs[t] = []
            for _ in range(LAYERS):
                ids = torch.rand(t, E, generator=gen, device=DEVICE).topk(TOP_K, dim=1)[1]
                w = torch.rand(t, TOP_K, generator=gen, device=DEVICE)
                x = rand(t, H, scale=1.0)
                self.inputs[t].append((x, w / w.sum(1, keepdim=True), ids.to(torch.int32)))

    def args(self, t: int, layer: int) -> Args:
        x, weights, ids = self.inputs[t][layer]
        return x, self.w13[layer], self.w2[layer], weights, ids

    def weight_bytes(self, t: int) -> float:
        """Mean bytes of the distinct experts' w13 and w2 that one call reads."""
        per_expert = 3 * INTER * H * self.w2[0].element_size()
        distinct = [torch.unique(ids).numel() for _, _, ids in self.inputs[t]]
        return per_expert * sum(distinct) / len(distinct)


def time_us(call: Call) -> float:
    """Microseconds per call over CALLS calls (sweep_common.graph_time_us)."""
    per_graph = LAYERS * 5
    return graph_time_us(call, DEVICE, LAYERS, per_graph, CALLS // per_graph)


class Sweep:
    def __init__(self, p: Problem) -> None:
        self.p = p
        self.ref = {t: fused_experts_grouped(*p.args(t, 0)) for t in TOKENS}
        self.max_err: dict[int, float] = {t: 0.0 for t in TOKENS}

    def correct(self, t: int, tiles: small_tiles.SmallTiles) -> bool:
        err = rel_err(small.fused_experts_small(*self.p.args(t, 0), tiles), self.ref[t])
        self.max_err[t] = max(self.max_err[t], err)
        if err > REL_TOL:
            print(f"  T={t} {tiles}: WRONG (rel err {err:.2e})")
        return err <= REL_TOL

    def gate_up(self, t: int, tile: GateUp) -> Call:
        def call(layer: int) -> Any:
            x, w13, _, _, ids = self.p.args(t, layer)
            return small.moe_small_gate_up(x, w13, ids, tile)

        return call

    def down(self, t: int, tile: Down) -> Call:
        acts = [self.gate_up(t, GATE_UP[0])(layer) for layer in range(LAYERS)]

        def call(layer: int) -> Any:
            _, _, w2, weights, ids = self.p.args(t, layer)
            return small.moe_small_down(acts[layer], w2, weights, ids, tile)

        return call

    def best(self, t: int, default: small_tiles.SmallTiles) -> tuple[GateUp, Down]:
        gate_up = self._best(t, GATE_UP, self.gate_up, lambda g: (g, default[1]))
        downs = [(*d, s) for d in DOWN_TILES for s in SPLITS if s <= TOP_K]
        down = self._best(t, downs, self.down, lambda d: (default[0], d))  # type: ignore[arg-type]
        return gate_up, down  # type: ignore[return-value]

    def _best(self, t: int, tiles: Sequence[Any], make: Any, full: Any) -> Any:
        times = {}
        for tile in tiles:
            try:
                if self.correct(t, full(tile)):
                    times[tile] = time_us(make(t, tile))
            except Exception as exc:  # a tile that does not compile: listed, not fatal
                print(f"  T={t} {tile}: {type(exc).__name__}: {str(exc)[:120]}")
        if not times:
            raise RuntimeError(f"T={t}: no candidate tile ran correctly")
        best = min(times, key=times.__getitem__)
        log(f"T={t:<3d} best {best}: {times[best]:.1f} us (of {len(times)})")
        return best


def _grouped(p: Problem, t: int) -> Call:
    return lambda layer: fused_experts_grouped(*p.args(t, layer))


def _small(p: Problem, t: int, tiles: small_tiles.SmallTiles) -> Call:
    def call(layer: int) -> Any:
        return small.fused_experts_small(*p.args(t, layer), tiles)

    return call


def run(p: Problem) -> tuple[list[list[Any]], dict[int, small_tiles.SmallTiles], int]:
    sweep = Sweep(p)
    rows: list[list[Any]] = []
    tiles: dict[int, small_tiles.SmallTiles] = {}
    default = small_tiles.pick(1)
    for t in TOKENS:
        tiles[t] = sweep.best(t, default)
        old, new = time_us(_grouped(p, t)), time_us(_small(p, t, tiles[t]))
        gb_s = [p.weight_bytes(t) / us / 1e3 for us in (old, new)]
        rows.append([t, old, new, *gb_s, sweep.max_err[t], tiles[t]])
        log(f"T={t}: grouped {old:.1f} us, small {new:.1f} us")
    last = 0  # the largest T such that the small path wins at every T up to it
    for row in rows:
        if row[2] >= row[1]:
            break
        last = row[0]
    kept = max(last, TOKENS[0])  # one entry even where the small path never wins
    return rows, {t: tiles[t] for t in TOKENS if t <= kept}, last


def table_source(table: dict[int, Any], crossover: int) -> str:
    """small_tiles.py's SMALL_MAX_PAIRS and SMALL_TILES assignments for these results."""
    lines = [f"SMALL_MAX_PAIRS = {crossover * TOP_K}", "SMALL_TILES: dict[int, SmallTiles] = {"]
    lines += [f"    {t}: {tiles}," for t, tiles in table.items()]
    return "\n".join([*lines, "}"]) + "\n"


def write_table(source: str) -> None:
    """Replaces the two assignments in small_tiles.py (from SMALL_MAX_PAIRS to the
    table's closing brace) with `source`."""
    replace_literal(small_tiles.__file__, "SMALL_MAX_PAIRS = ", source)


def report(rows: list[list[Any]], table: dict[int, Any], crossover: int) -> None:
    print("\n(a) T | grouped us | small us | grouped GB/s | small GB/s | max rel err | tiles")
    for t, old, new, gb_old, gb_new, err, tiles in rows:
        print(
            f"{t:5d} | {old:8.1f} | {new:8.1f} | {gb_old:8.0f} | {gb_new:8.0f} | {err:.1e} | {tiles}"
        )
    print("\n(b) ---- paste into pagedllm/layers/fused_moe/small_tiles.py ----")
    print(table_source(table, crossover), end="")
    print(f"# current: SMALL_MAX_PAIRS = {small_tiles.SMALL_MAX_PAIRS}")
    beyond = [r[0] for r in rows if r[0] > crossover]
    where = f"T = {beyond[0]}" if beyond else f"none up to T = {rows[-1][0]}"
    print(f"\n(c) crossover: the grouped path wins from {where} (k = {TOP_K})")


def _smoke() -> None:
    """Tiny shapes and few tiles on the CPU (TRITON_INTERPRET=1): the script's own test."""
    global E, TOP_K, H, INTER, TOKENS, LAYERS, DEVICE, DTYPE
    E, TOP_K, H, INTER, TOKENS, LAYERS = 8, 2, 40, 24, (1, 2), 1
    DEVICE, DTYPE = "cpu", torch.float32
    GATE_UP[:] = [(16, 32, 4, 1)]
    DOWN_TILES[:] = [(16, 32, 4, 1)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="CPU, TRITON_INTERPRET=1")
    parser.add_argument("--write", action="store_true", help="write (b) into small_tiles.py")
    args = parser.parse_args(argv)
    if args.smoke:
        _smoke()
    else:
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    rows, table, crossover = run(Problem())
    report(rows, table, crossover)
    if args.write and not args.smoke:
        write_table(table_source(table, crossover))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "crossover_tokens": crossover}, f, indent=1)
    log("done")


if __name__ == "__main__":
    main()
