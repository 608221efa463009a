"""The packed GGUF CPU kernel (layers/quantization/gguf_cpu_kernel.cpp, through
`gguf_linear`) against float32 through oneDNN (layers/cpu_linear.py, what the float
model uses), at SmolLM2-135M's layer shapes and decode/small-batch row counts.

Weights are random floats quantized by gguf-py (Q4_1 for the layers, Q8_0 for the LM
head, as in the packaged SmolLM2 file) and repacked as the loader does. Each
candidate is timed for `--calls` calls per repeat, the repeats interleaved among the
candidates; the table holds the minimum per call over `--repeats` repeats.

    PYTHONPATH=$PWD python scripts/gguf_cpu_gemv_bench.py [--baseline OLD.cpp]

`--baseline` builds another copy of the kernel source (e.g. main's, with its
gguf_cpu_panel.cpp and gguf_cpu_common.h beside it) and times it in
the same interleaved loop, for before/after figures on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, quants

from pagedllm.layers import cpu_linear
from pagedllm.layers.quantization import gguf_kernels
from pagedllm.layers.quantization.gguf_repack import PackedGGUF, dequantize, repack

SHAPES = {  # name: (N, K, GGUF type)
    "qkv": (960, 576, "Q4_1"),
    "o": (576, 576, "Q4_1"),
    "gate_up": (3072, 576, "Q4_1"),
    "down": (576, 1536, "Q4_1"),
    "lm_head": (49152, 576, "Q8_0"),
}


def _weight(n: int, k: int, type_name: str) -> tuple[PackedGGUF, torch.Tensor]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    qtype = GGMLQuantizationType[type_name]
    packed = repack(torch.from_numpy(quants.quantize(w, qtype)), int(qtype))
    return packed, dequantize(packed).contiguous()


def _with_ext(ext: Any) -> Callable[[torch.Tensor, PackedGGUF], torch.Tensor]:
    """gguf_linear with its extension swapped for `ext` (the baseline build)."""

    def call(x: torch.Tensor, p: PackedGGUF) -> torch.Tensor:
        saved = gguf_kernels.cpu_extension
        gguf_kernels.cpu_extension = lambda: ext  # type: ignore[assignment]
        try:
            return gguf_kernels.gguf_linear(x, p)
        finally:
            gguf_kernels.cpu_extension = saved  # type: ignore[assignment]

    return call


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = time.perf_counter


def _time(fn: Callable[[], object], calls: int) -> float:
    start = _clock()
    for _ in range(calls):
        fn()
    return (_clock() - start) / calls * 1e6


def _measure(cands: dict[str, Callable[[], object]], calls: int, repeats: int) -> dict[str, float]:
    for fn in cands.values():  # warm up (oneDNN packs the weight on its first call)
        fn()
    best = dict.fromkeys(cands, float("inf"))
    for _ in range(repeats):
        for name, fn in cands.items():
            best[name] = min(best[name], _time(fn, calls))
    return best


def _candidates(
    x: torch.Tensor, w: torch.Tensor, packed: PackedGGUF, base: Any | None
) -> dict[str, Callable[[], object]]:
    cands: dict[str, Callable[[], object]] = {
        "f32": partial(cpu_linear.linear, x, w),
        "packed": partial(gguf_kernels.gguf_linear, x, packed),
    }
    if base is not None:
        cands["base"] = partial(_with_ext(base), x, packed)
    return cands


def _calls(n: int, k: int, m: int, budget: int) -> int:
    return max(3, min(budget, int(2e8 // (n * k * max(m, 4)))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,4,32", help="M values (rows of x)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--layers", default=",".join(SHAPES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=30, help="calls per repeat (fewer for big ones)")
    ap.add_argument("--baseline", default=None, help="another gguf_cpu_kernel.cpp to compare")
    ap.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="cpu: the calling thread's CPU time, steadier on a loaded machine (1 thread only)",
    )
    args = ap.parse_args()
    global _clock
    _clock = CLOCKS[args.clock]
    ext = gguf_kernels.cpu_extension()
    if ext is None:
        raise SystemExit("the GGUF CPU kernel cannot be built here")
    base = None
    if args.baseline:
        from pagedllm.layers.cpu.extension import load_extension

        here = os.path.dirname(os.path.abspath(args.baseline))
        panel, header = (os.path.join(here, f) for f in ("gguf_cpu_panel.cpp", "gguf_cpu_common.h"))
        base = load_extension(
            "pagedllm_gguf_cpu_baseline", [args.baseline, panel], gguf_kernels.FLAGS, [header]
        )
    head = f"{'layer':8} {'N':>6} {'K':>5} {'type':5} {'M':>3} {'thr':>3} {'f32 us':>9}"
    head += f" {'packed us':>10} {'x f32':>6}" + (f" {'base us':>9} {'x base':>6}" if base else "")
    print(head)
    torch.set_grad_enabled(False)
    for name in args.layers.split(","):
        n, k, type_name = SHAPES[name]
        packed, w = _weight(n, k, type_name)
        for m in (int(v) for v in args.rows.split(",")):
            x = torch.randn(m, k)
            cands = _candidates(x, w, packed, base)
            for threads in (int(v) for v in args.threads.split(",")):
                torch.set_num_threads(threads)
                t = _measure(cands, _calls(n, k, m, args.calls), args.repeats)
                row = f"{name:8} {n:6} {k:5} {type_name:5} {m:3} {threads:3} {t['f32']:9.1f}"
                row += f" {t['packed']:10.1f} {t['f32'] / t['packed']:6.2f}"
                if base is not None:
                    row += f" {t['base']:9.1f} {t['base'] / t['packed']:6.2f}"
                print(row, flush=True)


if __name__ == "__main__":
    main()
