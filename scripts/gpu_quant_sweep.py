"""Sweep of the quantized-matmul kernels on CUDA at the Llama-3.1-8B linear shapes (bf16
activations): int4 g128 GEMV and tensor-core GEMM tiles, FP8 weight-only GEMV tiles
(FMA and tensor cores), FP8 activation quantization + tensor-wise torch._scaled_mm, and
bf16 F.linear; for 1 and 4 rows also the bandwidth-shaped int4 GEMV (triton_quant_gemv_wide,
tiles with a 6th entry: prefetch stages). For each row count M the tile with the least time summed over the four
shapes (one of each per decoder layer) wins; the script prints the winners and the
pagedllm/layers/quantization/kernel_table.py values that dispatch to them.

    PYTHONPATH=$PWD python scripts/gpu_quant_sweep.py [--only int|fp8] [--json out.json]
    PYTHONPATH=$PWD python scripts/gpu_quant_sweep.py --resources   # no GPU: registers,
        spills and shared memory of every swept wide-GEMV config compiled for sm_90a
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from pagedllm.layers.kernels.triton_fp8 import (
    FP8,
    fp8_gemv,
    quantize_per_tensor,
    quantize_per_tensor_ref,
)
from pagedllm.layers.kernels.triton_quant_gemm import quant_gemm
from pagedllm.layers.kernels.triton_quant_gemv import quant_gemv
from pagedllm.layers.kernels.triton_quant_gemv_wide import quant_gemv_wide
from pagedllm.layers.quantization import kernel_table
from pagedllm.layers.quantization.int_packing import dequantize_ref, pack_rows

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
MS: tuple[int, ...] = (1, 4, 8, 16, 64, 512)
DTYPE = torch.bfloat16
DEVICE = "cuda"
Tile = tuple[int, int, int, int, int]
Call = Callable[[], Any]
START = time.perf_counter()

# Candidate tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, per_sm) by M; kept few: every tile
# is a Triton compile (about a second each).
INT_GEMV = {
    1: [(1, bn, bk, 4, ps) for bn in (64, 128, 256) for bk in (128, 256) for ps in (2, 4, 8)]
    + [(1, 128, 128, 8, 4), (1, 256, 256, 8, 4)],
    4: [(4, 64, 128, 4, ps) for ps in (2, 4)] + [(4, 128, 128, 8, 4), (2, 128, 128, 4, 4)],
    8: [(8, 64, 128, 8, 4), (8, 32, 128, 4, 4), (4, 64, 128, 4, 4)],
    16: [(16, 32, 128, 8, 4), (8, 64, 128, 8, 4)],
}
# The wide GEMV: (BLOCK_M, BLOCK_N, BLOCK_K, warps, per_sm, stages); per_sm is a run-time
# choice (no compile), so it is swept widely.
WIDE = {
    1: [
        (1, bn, bk, w, ps, st)
        for bn, bk, w in ((64, 256, 4), (128, 128, 4), (128, 256, 4), (256, 256, 8), (128, 512, 8))
        for st in (1, 2)
        for ps in (8, 16, 32)
    ]
    + [(1, 256, 128, 4, ps, 1) for ps in (8, 16)],
    4: [
        (4, bn, bk, w, ps, st)
        for bn, bk, w in ((64, 128, 4), (64, 256, 4), (128, 128, 8))
        for st in (1, 2)
        for ps in (8, 16)
    ],
}
_GEMM_SMALL = [(16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (16, 128, 256, 8, 4)]
_GEMM_SMALL += [(16, 256, 128, 8, 2), (16, 128, 128, 4, 8)]
INT_GEMM = {
    1: _GEMM_SMALL,
    4: _GEMM_SMALL,
    8: _GEMM_SMALL,
    16: _GEMM_SMALL,
    64: [(64, 128, 128, 4, 2), (64, 64, 128, 4, 4), (64, 256, 128, 8, 1), (32, 128, 128, 4, 2)],
    512: [(128, 128, 128, 8, 1), (128, 256, 128, 8, 1), (64, 128, 128, 4, 1), (128, 64, 128, 4, 1)],
}
FP8_FMA = {
    1: [(1, bn, bk, 4, ps) for bn in (32, 64, 128) for bk in (128, 256) for ps in (2, 4, 8)],
    4: [(4, 32, 128, 4, ps) for ps in (2, 4)] + [(4, 64, 128, 8, 4), (2, 64, 128, 4, 4)],
    8: [(8, 32, 128, 8, 4), (4, 32, 128, 4, 4)],
}
_FP8_DOT = [(16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (16, 64, 256, 4, 4), (16, 32, 256, 4, 8)]
FP8_DOT = {1: _FP8_DOT, 4: _FP8_DOT, 8: _FP8_DOT, 16: _FP8_DOT}


def _time(fn: Call, iters: int = 50) -> float:
    """Microseconds per call, replayed from a CUDA graph (no launch overhead)."""
    if DEVICE != "cuda":  # --smoke: one plain call
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(10):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters // 10):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


class Weights:
    """int4 g128 and e4m3 weights of each shape, and the activations by M."""

    def __init__(self) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        self.int4: dict[str, dict[str, torch.Tensor]] = {}
        self.fp8: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.dense: dict[str, torch.Tensor] = {}
        for name, (k, n) in SHAPES.items():
            codes = torch.randint(0, 16, (k, n), dtype=torch.int32, device=DEVICE, generator=gen)
            self.int4[name] = {
                "qweight": pack_rows(codes, 4),
                "scales": (torch.rand(k // 128, n, device=DEVICE, generator=gen) / 500).to(DTYPE),
                "zeros": torch.randint(0, 16, (k // 128, n), device=DEVICE, generator=gen).to(
                    DTYPE
                ),
            }
            w = torch.randn(n, k, device=DEVICE, generator=gen) / 64
            self.dense[name] = w.to(DTYPE)
            scale = w.abs().amax() / 448.0
            self.fp8[name] = ((w / scale).to(FP8), scale.expand(n).contiguous())
        self.x = {
            (m, name): torch.randn(m, k, device=DEVICE, generator=gen).to(DTYPE)
            for m in MS
            for name, (k, _) in SHAPES.items()
        }

    def int_ref(self, name: str, m: int) -> torch.Tensor:
        w = self.int4[name]
        deq = dequantize_ref(w["qweight"], 4, w["scales"], w["zeros"], None, 128)
        return self.x[m, name].float() @ deq

    def fp8_ref(self, name: str, m: int) -> torch.Tensor:
        q, s = self.fp8[name]
        return self.x[m, name].float() @ (q.float() * s[:, None]).t()


def _int_gemv(w: Weights, tile: Tile, m: int, name: str) -> Call:
    p = w.int4[name]
    return functools.partial(
        quant_gemv, w.x[m, name], p["qweight"], 4, 128, p["scales"], p["zeros"],
        blocks=tile[:4], per_sm=tile[4],
    )  # fmt: skip


def _int_wide(w: Weights, tile: tuple[int, ...], m: int, name: str) -> Call:
    p = w.int4[name]
    return functools.partial(
        quant_gemv_wide, w.x[m, name], p["qweight"], 4, 128, p["scales"], p["zeros"],
        blocks=tile[:4], per_sm=tile[4], stages=tile[5],
    )  # fmt: skip


def _int_gemm(w: Weights, tile: Tile, m: int, name: str, half_magic: bool = True) -> Call:
    p = w.int4[name]
    return functools.partial(
        quant_gemm, w.x[m, name], p["qweight"], 4, 128, p["scales"], p["zeros"],
        blocks=tile[:4], per_sm=tile[4], half_magic=half_magic,
    )  # fmt: skip


def _fp8_gemv(
    w: Weights, tile: Tile, m: int, name: str, dot: bool, bit_convert: bool = True
) -> Call:
    q, s = w.fp8[name]
    return functools.partial(
        fp8_gemv, w.x[m, name], q, s, blocks=tile[:4], per_sm=tile[4], dot=dot,
        bit_convert=bit_convert,
    )  # fmt: skip


def _fp8_scaled(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, triton_quant: bool) -> Any:
    if triton_quant:
        x_q, x_s = quantize_per_tensor(x)
    else:
        x_q, x_s = quantize_per_tensor_ref(x)
    return torch._scaled_mm(x_q, q.t(), scale_a=x_s, scale_b=s[0], out_dtype=x.dtype)


def _scaled_call(w: Weights, m: int, name: str, triton_quant: bool) -> Call:
    return functools.partial(_fp8_scaled, w.x[m, name], *w.fp8[name], triton_quant=triton_quant)


def _dense_call(w: Weights, m: int, name: str) -> Call:
    return functools.partial(F.linear, w.x[m, name], w.dense[name])


def sweep(
    w: Weights,
    label: str,
    tiles: dict[int, list[Any]],
    make: Callable[[Weights, Any, int, str], Call],
    ref: Callable[[str, int], torch.Tensor],
    tol: float,
) -> dict[int, tuple[float, Any, dict[str, float]]]:
    """{M: (summed us, best tile, us by shape)} over the candidate tiles."""
    best: dict[int, tuple[float, Any, dict[str, float]]] = {}
    for m, candidates in tiles.items():
        refs = {"o": ref("o", m)}
        for tile in candidates:
            try:
                err = _rel_err(make(w, tile, m, "o")(), refs["o"])
                if err > tol:
                    print(f"  {label} M={m} {tile}: WRONG (rel err {err:.2e})")
                    continue
                times = {name: _time(make(w, tile, m, name)) for name in SHAPES}
            except Exception as exc:  # a tile that does not compile: listed, not fatal
                print(f"  {label} M={m} {tile}: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            total = sum(times.values())
            if m not in best or total < best[m][0]:
                best[m] = (total, tile, times)
        if m in best:
            _log(f"{label:10s} M={m:<4d} best {best[m][1]}  {_shapes(best[m])}")
    return best


def _shapes(entry: tuple[float, object, dict[str, float]]) -> str:
    return (
        f"sum {entry[0]:7.1f} us  (" + " ".join(f"{k} {v:.1f}" for k, v in entry[2].items()) + ")"
    )


def baseline(w: Weights, label: str, make: Callable[[int, str], Call]) -> dict[int, float]:
    sums = {}
    for m in MS:
        times = {name: _time(make(m, name)) for name in SHAPES}
        sums[m] = sum(times.values())
        _log(f"{label:10s} M={m:<4d} {_shapes((sums[m], None, times))}")
    return sums


def run_int(w: Weights, dense: dict[int, float]) -> dict[str, object]:
    gemv = sweep(w, "int4 gemv", INT_GEMV, _int_gemv, w.int_ref, 2e-2)
    gemm = sweep(w, "int4 gemm", INT_GEMM, _int_gemm, w.int_ref, 2e-2)
    wide = sweep(w, "int4 wide", WIDE, _int_wide, w.int_ref, 2e-2)
    for m in [r for r in MS if r in (1, 16, 512)]:  # codes through float32, not bf16 bits
        if m in gemm:
            tile = gemm[m][1]
            t = sum(_time(_int_gemm(w, tile, m, n, half_magic=False)) for n in SHAPES)
            _log(f"int4 gemm M={m} {tile} float32 codes: sum {t:.1f} us")
    print("\nint4 g128 (sum over the 4 shapes, us):   M   bf16   gemv   gemm")
    for m in MS:
        tv, tm = gemv.get(m, (float("inf"),))[0], gemm.get(m, (float("inf"),))[0]
        print(f"{'':40s}{m:4d} {dense[m]:7.1f} {tv:7.1f} {tm:7.1f}")
    gemv_max = _contiguous_wins({m: gemv[m][0] for m in gemv}, {m: gemm[m][0] for m in gemm})
    return {
        "INT_GEMV_MAX_ROWS": gemv_max,
        "INT_GEMV_TILES": {m: gemv[m][1] for m in sorted(gemv)},
        "INT_GEMM_TILES": _open_ended({m: gemm[m][1] for m in sorted(gemm)}),
        **_wide_values(w, wide, gemv, gemm, dense),
    }


def _wide_values(
    w: Weights,
    wide: dict[int, tuple[float, Any, dict[str, float]]],
    gemv: dict[int, tuple[float, Any, dict[str, float]]],
    gemm: dict[int, tuple[float, Any, dict[str, float]]],
    dense: dict[int, float],
) -> dict[str, object]:
    """The wide GEMV against the others (and int4 bytes per second), its table values."""
    weight_bytes = sum(
        sum(t.numel() * t.element_size() for t in p.values()) for p in w.int4.values()
    )
    print(
        "\nint4 wide GEMV (sum over the 4 shapes, us):   M   bf16   gemv   gemm   wide  int4 TB/s"
    )
    others = {}
    for m in sorted(wide):
        tv, tm = (t.get(m, (float("inf"),))[0] for t in (gemv, gemm))
        others[m] = min(tv, tm)
        tw = wide[m][0]
        print(
            f"{'':45s}{m:4d} {dense[m]:7.1f} {tv:7.1f} {tm:7.1f} {tw:7.1f} {weight_bytes / tw / 1e6:6.2f}"
        )
    best = wide[min(wide)][1] if wide else kernel_table.INT_GEMV_WIDE_TILES[1] + (1,)
    return {
        "INT_GEMV_WIDE_MAX_ROWS": _contiguous_wins({m: e[0] for m, e in wide.items()}, others),
        "INT_GEMV_WIDE_TILES": {m: tuple(e[1][:5]) for m, e in sorted(wide.items())},
        "INT_GEMV_WIDE_STAGES": best[5],
    }


def _contiguous_wins(a: dict[int, float], b: dict[int, float]) -> int:
    """The largest M such that `a` beats `b` at every measured M up to it (0: none)."""
    last = 0
    for m in sorted(a):
        if a[m] >= b.get(m, float("inf")):
            break
        last = m
    return last


def _open_ended(table: dict[int, Tile]) -> dict[int, Tile]:
    if not table:
        return table
    last = max(table)
    return {**{m: t for m, t in table.items() if m != last}, 1 << 30: table[last]}


def run_fp8(w: Weights, dense: dict[int, float]) -> dict[str, object]:
    for m in [r for r in MS if r in (1, 16, 512)]:
        x = w.x[m, "gate_up"]
        t_torch = _time(functools.partial(quantize_per_tensor_ref, x))
        t_triton = _time(functools.partial(quantize_per_tensor, x))
        q_a, s_a = quantize_per_tensor(x)
        q_b, s_b = quantize_per_tensor_ref(x)
        same = torch.equal(q_a.float(), q_b.float()) and torch.equal(s_a, s_b)
        _log(f"fp8 act quant M={m}: torch {t_torch:.1f} us, triton {t_triton:.1f} us, same={same}")
    fma = sweep(w, "fp8 fma", FP8_FMA, functools.partial(_fp8_gemv, dot=False), w.fp8_ref, 2e-2)
    cvt = {}  # the FMA winners with e4m3 -> float32 by conversion instructions
    for m, (_, tile, _) in fma.items():
        cvt[m] = sum(_time(_fp8_gemv(w, tile, m, n, False, bit_convert=False)) for n in SHAPES)
        _log(f"fp8 fma M={m} {tile} cvt instead of bit placement: sum {cvt[m]:.1f} us")
    dot = sweep(w, "fp8 dot", FP8_DOT, functools.partial(_fp8_gemv, dot=True), w.fp8_ref, 2e-2)
    scaled = {}
    for triton_quant in (False, True):
        label = "scaled+tq" if triton_quant else "scaled+torch"
        make = functools.partial(_scaled_call, w, triton_quant=triton_quant)
        scaled[triton_quant] = baseline(w, label, make)
    gemv = {m: min(e for e in (fma.get(m), dot.get(m)) if e is not None) for m in {*fma, *dot}}
    print(
        "\nfp8 (sum over the 4 shapes, us):   M   bf16    fma    dot  scaled(torch q)  (triton q)"
    )
    for m in MS:
        tf, td = (t.get(m, (float("inf"),))[0] for t in (fma, dot))
        print(
            f"{'':33s}{m:4d} {dense[m]:7.1f} {tf:7.1f} {td:7.1f} "
            f"{scaled[False][m]:9.1f} {scaled[True][m]:9.1f}"
        )
    best_scaled = {m: min(scaled[False][m], scaled[True][m]) for m in MS}
    gemv_max = _contiguous_wins({m: e[0] for m, e in gemv.items()}, best_scaled)
    above = [m for m in MS if m > gemv_max]
    return {
        "FP8_GEMV_MAX_ROWS": gemv_max,
        "FP8_GEMV_TILES": {m: gemv[m][1] for m in sorted(gemv)},
        "FP8_GEMV_BIT_CONVERT": sum(e[0] for e in fma.values()) <= sum(cvt.values()),
        "FP8_ACT_QUANT_TRITON": sum(scaled[True][m] for m in above)
        <= sum(scaled[False][m] for m in above),
    }


def print_table(values: dict[str, object]) -> None:
    print("\n# ---- paste into pagedllm/layers/quantization/kernel_table.py ----")
    for key, value in values.items():
        if isinstance(value, dict):
            print(f"{key}: dict[int, Tile] = {{")
            for m, tile in value.items():
                print(f"    {'1 << 30' if m == 1 << 30 else m}: {tuple(tile)},")
            print("}")
        else:
            print(f"{key} = {value}")
    print("# current values:")
    for key in values:
        print(f"#   {key} = {getattr(kernel_table, key)}")


def _smoke() -> None:
    """Tiny shapes and tiles on the CPU (TRITON_INTERPRET=1): the script's own test."""
    global DEVICE, MS
    DEVICE, MS = "cpu", (1, 4, 16)
    SHAPES.clear()
    SHAPES.update({"o": (256, 64), "gate_up": (256, 96)})
    small = {1: [(1, 32, 128, 4, 2)], 4: [(4, 32, 128, 4, 2)], 16: [(16, 32, 128, 4, 1)]}
    for table in (INT_GEMV, INT_GEMM, FP8_FMA, FP8_DOT):
        table.clear()
        table.update(small)
    WIDE.clear()
    WIDE.update({1: [(1, 32, 128, 4, 2, 1)], 4: [(4, 32, 64, 4, 2, 1)]})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("int", "fp8"))
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="CPU, TRITON_INTERPRET=1")
    parser.add_argument("--resources", action="store_true", help="no GPU: sm_90a compile report")
    args = parser.parse_args(argv)
    if args.resources:
        from scripts.wide_gemv_resources import report

        report(WIDE)
        return
    if args.smoke:
        _smoke()
    else:
        print(torch.cuda.get_device_name(), torch.__version__)
    w = Weights()
    dense = baseline(w, "bf16", functools.partial(_dense_call, w))
    values: dict[str, object] = {}
    if args.only != "fp8":
        values.update(run_int(w, dense))
    if args.only != "int":
        values.update(run_fp8(w, dense))
    print_table(values)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: str(v) for k, v in values.items()}, f, indent=1)
    _log("done")


if __name__ == "__main__":
    main()
