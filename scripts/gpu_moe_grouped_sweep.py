"""Sweep of the sorted grouped-GEMM experts path's tiles (kernels/triton_fused_moe.py) at
the Qwen3-30B-A3B expert shape (E=128, top 8, H=2048, I=768, bf16, random routing) on
an H200, for T = 16..8192 tokens: BLOCK_M/N/K, num_warps, num_stages per GEMM (gate/up
with SiLU fused: 2048 -> 2x768; down: 768 -> 2048), then GROUP_M for the winners. About
3-4 minutes, compiles included: every candidate is first compiled by a pool of worker
processes (one per CPU core, into Triton's disk cache) that also drops those over the
shared memory limit (227 KB on sm_90); the timing process then loads them.

Both GEMMs of one T share BLOCK_M (one moe_align_block_size): per BLOCK_M the best
gate/up and the best down tile are timed alone, and the BLOCK_M of the least sum wins.
Every candidate is checked once per T against a torch reference (a float32 loop over
the experts); LAYERS copies of the weights and routing are cycled in a CUDA graph, so
the 50 MB L2 never holds the next call's experts. Prints progress lines, then per T the
best tiles, their us, TFLOP/s and GB/s of distinct experts' weights, the default's us,
and the whole grouped path (align + 2 GEMMs + sum) with the old and the new tiles.

    PYTHONPATH=$PWD python3 scripts/gpu_moe_grouped_sweep.py [--write] [--json out.json]
    PYTHONPATH=$PWD python3 scripts/kernel_resources.py --moe-grouped  # no GPU: sm_90a
        compile of every candidate the sweep may time, its shared memory and registers
    PYTHONPATH=$PWD python3 scripts/gpu_moe_grouped_sweep.py --smoke    # CPU interpreter

--write rewrites this shape's entry of GROUPED_TILES in fused_moe/grouped_tiles.py.
"""

from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv:  # before triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from pagedllm.layers.fused_moe import grouped_tiles as gt  # noqa: E402
from pagedllm.layers.fused_moe.fused_moe import (  # noqa: E402
    fused_experts_grouped,
    grouped_down,
    grouped_gate_up,
)
from pagedllm.layers.fused_moe.moe_align_block_size import moe_align_block_size  # noqa: E402

E, TOP_K, H, INTER = 128, 8, 2048, 768
TOKENS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
LAYERS = 4
DTYPE, DEVICE = torch.bfloat16, "cuda"
REL_TOL = 2e-2
SMEM_LIMIT = 227 * 1024  # sm_90's largest opt-in shared memory per block
BUDGET_S = 200.0  # past this, the remaining T only retry earlier winners
START = time.perf_counter()
GATE_UP, DOWN = "gate_up", "down"
Tile = gt.Tile
Call = Callable[[int], Any]  # layer index -> launch


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


# ---- candidates --------------------------------------------------------------------


def block_ms(tokens: int) -> tuple[int, ...]:
    """Row blocks worth trying for about tokens * k / E rows per expert."""
    rows = tokens * TOP_K / E
    lo = 16 if rows <= 32 else 32 if rows <= 128 else 64
    hi = 32 if rows <= 16 else 64 if rows <= 32 else 128
    return tuple(bm for bm in (16, 32, 64, 128) if lo <= bm <= hi)


def smem_bytes(tile: Tile, gated: bool) -> int:
    """Triton's pipelined operand buffers: `stages` copies of the A and B tiles on
    wgmma (BLOCK_M >= 64), stages - 1 below (offline sm_90a compiles match this)."""
    bm, bn, bk, _, _, stages = tile
    per_stage = (bm * bk + (2 if gated else 1) * bk * bn) * 2
    return per_stage * (stages if bm >= 64 else stages - 1)


def group_m(tokens: int, bm: int) -> int:
    """Row blocks of one expert share B tiles only when an expert has several."""
    return 1 if tokens * TOP_K / E <= bm else 8


def candidates(tokens: int, gemm: str) -> list[Tile]:
    out = []
    for bm in block_ms(tokens):
        for bn in (64, 128, 256):
            for bk in (64, 128):
                for warps in (4, 8) if bm * bn >= 64 * 128 else (4,):
                    for stages in (3, 4, 5):
                        tile = (bm, bn, bk, group_m(tokens, bm), warps, stages)
                        if smem_bytes(tile, gemm == GATE_UP) <= SMEM_LIMIT:
                            out.append(tile)
    return out


def all_candidates(gemm: str) -> list[Tile]:
    tiles = {t for tokens in TOKENS for t in candidates(tokens, gemm)}
    tiles |= {_default(tokens, gemm) for tokens in TOKENS}
    return sorted(tiles)


def _default(tokens: int, gemm: str) -> Tile:
    gate_up, down = gt.default_tiles(tokens, TOP_K, E)
    return gate_up if gemm == GATE_UP else down


# ---- problem and timing ------------------------------------------------------------


class Problem:
    """LAYERS copies of the expert weights; per T, inputs and routing per copy."""

    def __init__(self) -> None:
        self.gen = torch.Generator(device=DEVICE).manual_seed(0)
        self.w13 = [self.rand(E, 2 * INTER, H, scale=H**-0.5) for _ in range(LAYERS)]
        self.w2 = [self.rand(E, H, INTER, scale=INTER**-0.5) for _ in range(LAYERS)]

    def rand(self, *shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.gen, device=DEVICE) * scale).to(DTYPE)

    def inputs(self, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(x [T, H], topk_weights [T, k], topk_ids [T, k]) per copy."""
        out = []
        for _ in range(LAYERS):
            ids = torch.rand(tokens, E, generator=self.gen, device=DEVICE).topk(TOP_K, dim=1)[1]
            w = torch.rand(tokens, TOP_K, generator=self.gen, device=DEVICE)
            out.append((self.rand(tokens, H, scale=1.0), w / w.sum(1, keepdim=True), ids.int()))
        return out


def time_us(call: Call, tokens: int) -> float:
    """Microseconds per call: a CUDA graph of calls cycling the copies, replayed,
    timed by CUDA events (one plain call off CUDA: --smoke)."""
    if DEVICE != "cuda":
        start = time.perf_counter()
        call(0)
        return (time.perf_counter() - start) * 1e6
    per_graph = LAYERS * (4 if tokens <= 512 else 2)
    replays = 8 if tokens <= 512 else 4 if tokens <= 2048 else 2
    for layer in range(LAYERS):
        call(layer)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(per_graph):
            call(i % LAYERS)
    graph.replay()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) * 1e3 / (replays * per_graph)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


class Case:
    """One T: inputs, the torch reference of each GEMM, alignments per BLOCK_M."""

    def __init__(self, p: Problem, tokens: int) -> None:
        self.p, self.tokens = p, tokens
        self.inputs = p.inputs(tokens)
        self.aligns: dict[int, list[Any]] = {}
        self.act_ref, self.down_ref = self._reference()
        self.acts = [self.act_ref] + [self._act(layer) for layer in range(1, LAYERS)]
        self.active = sum(torch.unique(ids).numel() for _, _, ids in self.inputs) / LAYERS

    def _reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy 0 in float32, expert by expert: act [T*k, I] (in the model dtype, the
        down GEMM's input) and the weighted down rows [T*k, H]."""
        x, weights, ids = self.inputs[0]
        flat = ids.reshape(-1).long()
        act = torch.empty(flat.numel(), INTER, dtype=DTYPE, device=DEVICE)
        down = torch.empty(flat.numel(), H, dtype=torch.float32, device=DEVICE)
        for e in torch.unique(flat).tolist():
            rows = torch.nonzero(flat == e).squeeze(1)
            gu = x[rows // TOP_K].float() @ self.p.w13[0][e].float().T
            act[rows] = (torch.nn.functional.silu(gu[:, :INTER]) * gu[:, INTER:]).to(DTYPE)
            y = act[rows].float() @ self.p.w2[0][e].float().T
            down[rows] = y * weights.reshape(-1)[rows, None]
        return act, down

    def _act(self, layer: int) -> torch.Tensor:
        cfg = gt.as_config(_default(self.tokens, GATE_UP))
        x, _, ids = self.inputs[layer]
        return grouped_gate_up(x, self.p.w13[layer], self.align(cfg["BLOCK_M"])[layer], TOP_K, cfg)

    def align(self, bm: int) -> list[Any]:
        if bm not in self.aligns:
            self.aligns[bm] = [moe_align_block_size(ids, bm, E) for _, _, ids in self.inputs]
        return self.aligns[bm]

    def call(self, gemm: str, tile: Tile) -> Call:
        cfg, aligns = gt.as_config(tile), self.align(tile[0])

        def gate_up(layer: int) -> Any:
            x = self.inputs[layer][0]
            return grouped_gate_up(x, self.p.w13[layer], aligns[layer], TOP_K, cfg)

        def down(layer: int) -> Any:
            weights = self.inputs[layer][1]
            return grouped_down(self.acts[layer], self.p.w2[layer], weights, aligns[layer], cfg)

        return gate_up if gemm == GATE_UP else down

    def error(self, gemm: str, tile: Tile) -> float:
        ref = self.act_ref if gemm == GATE_UP else self.down_ref
        return _rel_err(self.call(gemm, tile)(0), ref)

    def rates(self, gemm: str, us: float) -> tuple[float, float]:
        """(TFLOP/s, GB/s of the distinct experts' weights of this GEMM)."""
        cols = 2 * INTER if gemm == GATE_UP else H
        flops = 2 * self.tokens * TOP_K * cols * (H if gemm == GATE_UP else INTER)
        weight_bytes = self.active * 2 * INTER * H * 2 / (1 if gemm == GATE_UP else 2)
        return flops / us / 1e6, weight_bytes / us / 1e3

    def grouped(self, tiles: gt.GroupedTiles | None) -> Call:
        """The whole grouped path (align, both GEMMs, sum) with `tiles` (None: default)."""

        def call(layer: int) -> Any:
            x, weights, ids = self.inputs[layer]
            w13, w2 = self.p.w13[layer], self.p.w2[layer]
            saved = gt.GROUPED_TILES.get(SHAPE)
            gt.GROUPED_TILES[SHAPE] = {1 << 30: tiles} if tiles else {}
            try:
                return fused_experts_grouped(x, w13, w2, weights, ids)
            finally:
                gt.GROUPED_TILES[SHAPE] = saved or {}

        return call


SHAPE: gt.Shape = (E, H, INTER, TOP_K)


# ---- compile pool ------------------------------------------------------------------


def _compile_worker(jobs: list[tuple[str, Tile]]) -> list[tuple[str, Tile, str]]:
    """Compiles (and launches once, tiny) each job's kernel on this process's GPU, so
    that Triton's disk cache holds it for the timing process; '' or the error."""
    torch.cuda.set_device(0)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(16, H, generator=gen, device=DEVICE).to(DTYPE)
    w13 = torch.randn(2, 2 * INTER, H, generator=gen, device=DEVICE).to(DTYPE)
    w2 = torch.randn(2, H, INTER, generator=gen, device=DEVICE).to(DTYPE)
    ids = torch.randint(0, 2, (16, TOP_K), generator=gen, device=DEVICE, dtype=torch.int32)
    weights = torch.rand(16, TOP_K, generator=gen, device=DEVICE)
    act = torch.zeros(16 * TOP_K, INTER, dtype=DTYPE, device=DEVICE)
    results = []
    for gemm, tile in jobs:
        cfg = gt.as_config(tile)
        try:
            align = moe_align_block_size(ids, tile[0], 2)
            if gemm == GATE_UP:
                grouped_gate_up(x, w13, align, TOP_K, cfg)
            else:
                grouped_down(act, w2, weights, align, cfg)
            torch.cuda.synchronize()
            results.append((gemm, tile, ""))
        except Exception as exc:  # over the shared memory, or a compile failure
            results.append((gemm, tile, f"{type(exc).__name__}: {str(exc)[:100]}"))
    return results


def precompile(jobs: list[tuple[str, Tile]]) -> set[tuple[str, Tile]]:
    """Compiles all jobs in parallel worker processes; the jobs that failed."""
    workers = max(1, min(len(jobs), (os.cpu_count() or 2) - 1))
    chunks = [jobs[i::workers] for i in range(workers)]
    _log(f"compiling {len(jobs)} kernels in {workers} processes")
    failed = set()
    ctx = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for results in pool.map(_compile_worker, chunks):
            for gemm, tile, err in results:
                if err:
                    failed.add((gemm, tile))
                    print(f"  skip {gemm} {tile}: {err}", flush=True)
    _log(f"compiled: {len(jobs) - len(failed)} of {len(jobs)} usable")
    return failed


# ---- sweep -------------------------------------------------------------------------


class Sweep:
    def __init__(self, p: Problem, failed: set[tuple[str, Tile]]) -> None:
        self.p, self.failed = p, failed
        self.winners: set[tuple[str, Tile]] = set()

    def time(self, case: Case, gemm: str, tile: Tile) -> float | None:
        """us per call, None for a tile that fails (compile, resources, wrong result)."""
        if (gemm, tile) in self.failed:
            return None
        try:
            err = case.error(gemm, tile)
            if err > REL_TOL:
                print(f"  T={case.tokens} {gemm} {tile}: WRONG (rel err {err:.2e})", flush=True)
                return None
            return time_us(case.call(gemm, tile), case.tokens)
        except Exception as exc:  # listed, not fatal
            print(f"  T={case.tokens} {gemm} {tile}: {type(exc).__name__}: {str(exc)[:100]}")
            self.failed.add((gemm, tile))
            return None

    def best(self, case: Case, gemm: str, tiles: Sequence[Tile]) -> dict[int, tuple[Tile, float]]:
        """Per BLOCK_M: the fastest tile and its us."""
        out: dict[int, tuple[Tile, float]] = {}
        for tile in tiles:
            us = self.time(case, gemm, tile)
            if us is not None and (tile[0] not in out or us < out[tile[0]][1]):
                out[tile[0]] = (tile, us)
        return out

    def tiles_for(self, tokens: int, gemm: str) -> list[Tile]:
        if time.perf_counter() - START < BUDGET_S:
            return candidates(tokens, gemm)
        _log(f"T={tokens}: past {BUDGET_S:.0f} s, earlier winners only")
        return sorted({t for g, t in self.winners if g == gemm} | {_default(tokens, gemm)})

    def pick(self, case: Case) -> dict[str, Any]:
        """Phase 1: per GEMM the fastest tile of the BLOCK_M with the least sum."""
        t = case.tokens
        per_bm = {g: self.best(case, g, self.tiles_for(t, g)) for g in (GATE_UP, DOWN)}
        shared = set(per_bm[GATE_UP]) & set(per_bm[DOWN])
        if not shared:
            raise RuntimeError(f"T={t}: no BLOCK_M with a working tile for both GEMMs")
        bm = min(shared, key=lambda m: per_bm[GATE_UP][m][1] + per_bm[DOWN][m][1])
        row: dict[str, Any] = {"tokens": t}
        for gemm in (GATE_UP, DOWN):
            tile, us = per_bm[gemm][bm]
            row[gemm] = {
                "tile": tile,
                "us": us,
                "default_us": self.time(case, gemm, _default(t, gemm)),
            }
            self.winners.add((gemm, tile))
        _log(
            f"T={t:<5d} BLOCK_M {bm}: gate_up {row[GATE_UP]['tile']} {row[GATE_UP]['us']:.1f} us, "
            f"down {row[DOWN]['tile']} {row[DOWN]['us']:.1f} us (of {sum(len(candidates(t, g)) for g in (GATE_UP, DOWN))})"
        )
        return row

    def refine(self, case: Case, row: dict[str, Any]) -> None:
        """Phase 2: GROUP_M of the winners; then the whole path, old and new tiles."""
        for gemm in (GATE_UP, DOWN):
            tile, us = row[gemm]["tile"], row[gemm]["us"]
            for other in group_variants(tile):
                t_us = self.time(case, gemm, other) if other != tile else None
                if t_us is not None and t_us < us:
                    row[gemm].update(tile=other, us=t_us)
                    us = t_us
            row[gemm]["tflops"], row[gemm]["gbs"] = case.rates(gemm, row[gemm]["us"])
        tiles = (row[GATE_UP]["tile"], row[DOWN]["tile"])
        row["path_old_us"] = time_us(case.grouped(None), case.tokens)
        row["path_new_us"] = time_us(case.grouped(tiles), case.tokens)
        _log(
            f"T={case.tokens:<5d} GROUP_M: {tiles}; path {row['path_old_us']:.1f} -> "
            f"{row['path_new_us']:.1f} us"
        )


def group_variants(tile: Tile) -> list[Tile]:
    """The tile with GROUP_M 1, 8 and 32 (phase 2)."""
    return [(*tile[:3], m, *tile[4:]) for m in (1, 8, 32)]  # type: ignore[misc]


def run(p: Problem) -> list[dict[str, Any]]:
    jobs = [(g, t) for g in (GATE_UP, DOWN) for t in all_candidates(g)]
    failed = precompile(jobs) if DEVICE == "cuda" else set()
    sweep = Sweep(p, failed)
    cases, rows = {}, []
    for tokens in TOKENS:
        cases[tokens] = Case(p, tokens)
        rows.append(sweep.pick(cases[tokens]))
    more = {(g, v) for row in rows for g in (GATE_UP, DOWN) for v in group_variants(row[g]["tile"])}
    if DEVICE == "cuda":
        sweep.failed |= precompile(sorted(more - set(jobs)))
    for row in rows:
        sweep.refine(cases[row["tokens"]], row)
    return rows


# ---- report and table --------------------------------------------------------------


def table_source(table: dict[gt.Shape, dict[int, gt.GroupedTiles]]) -> str:
    """grouped_tiles.py's GROUPED_TILES assignment."""
    lines = ["GROUPED_TILES: dict[Shape, dict[int, GroupedTiles]] = {"]
    for shape in sorted(table):
        lines.append(f"    {shape}: {{")
        lines += [f"        {t}: {tiles}," for t, tiles in sorted(table[shape].items())]
        lines.append("    },")
    return "\n".join([*lines, "}"]) + "\n"


def new_table(rows: list[dict[str, Any]]) -> dict[gt.Shape, dict[int, gt.GroupedTiles]]:
    table = dict(gt.GROUPED_TILES)
    table[SHAPE] = {r["tokens"]: (r[GATE_UP]["tile"], r[DOWN]["tile"]) for r in rows}
    return table


def write_table(source: str) -> None:
    """Replaces the GROUPED_TILES assignment (to its closing brace) in grouped_tiles.py."""
    path = gt.__file__
    with open(path) as f:
        text = f.read()
    start = text.index("GROUPED_TILES: dict")
    first_line = text[start : text.index("\n", start)]
    end = start + len(first_line) + 1
    if not first_line.endswith("{}"):  # a multi-line literal: to its closing brace
        end = text.index("\n}\n", start) + 3
    with open(path, "w") as f:
        f.write(text[:start] + source + text[end:])


def report(rows: list[dict[str, Any]]) -> None:
    print(
        "\n    T | GEMM    | best tile (BM, BN, BK, GM, warps, stages) |     us | TFLOP/s |  GB/s | default us"
    )
    for r in rows:
        for gemm in (GATE_UP, DOWN):
            g = r[gemm]
            default = f"{g['default_us']:.1f}" if g["default_us"] is not None else "fails"
            print(
                f"{r['tokens']:5d} | {gemm:7s} | {str(g['tile']):41s} | {g['us']:6.1f} | "
                f"{g['tflops']:7.1f} | {g['gbs']:5.0f} | {default}"
            )
    print("\n    T | whole grouped path (align, GEMMs, sum): default tiles us -> table us")
    for r in rows:
        print(f"{r['tokens']:5d} | {r['path_old_us']:8.1f} -> {r['path_new_us']:8.1f}")


# ---- smoke and main ----------------------------------------------------------------


def _smoke() -> None:
    """Tiny shapes and two tiles on the CPU (TRITON_INTERPRET=1): the script's own test."""
    global E, TOP_K, H, INTER, TOKENS, LAYERS, DEVICE, DTYPE, SHAPE
    E, TOP_K, H, INTER, TOKENS, LAYERS = 4, 2, 32, 32, (9,), 1
    DEVICE, DTYPE, SHAPE = "cpu", torch.float32, (4, 32, 32, 2)
    small = [(16, 32, 32, 1, 4, 2), (16, 16, 32, 1, 4, 2)]
    globals()["candidates"] = lambda tokens, gemm: small
    globals()["_default"] = lambda tokens, gemm: small[0]
    globals()["group_variants"] = lambda tile: [tile, (*tile[:3], 2, *tile[4:])]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="CPU, TRITON_INTERPRET=1")
    parser.add_argument("--write", action="store_true", help="rewrite GROUPED_TILES' entry")
    args = parser.parse_args(argv)
    if args.smoke:
        _smoke()
    else:
        print(torch.cuda.get_device_name(), torch.cuda.get_device_capability(), flush=True)
    rows = run(Problem())
    report(rows)
    source = table_source(new_table(rows))
    print("\n---- grouped_tiles.py's table ----\n" + source, end="")
    if args.write and not args.smoke:
        write_table(source)
        _log(f"wrote {gt.__file__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    _log("done")


if __name__ == "__main__":
    main()
