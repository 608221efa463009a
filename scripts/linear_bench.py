"""Benchmark steps of `kernel_bench.py` for the linear layers of the Llama-3.1-8B shape
at decode row counts: cuBLAS (F.linear), cuBLASLt, the Triton skinny product
(`layers/kernels/triton_gemv.py`) and the host cost of launching a prefill-sized product.
Weights are rotated among copies of at least 256 MiB, so no call finds its weight in L2.

    python scripts/kernel_bench.py --steps gemv,skinny_gemm,blas_choice,host_mm
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from bench_common import Fn, Row, bench, rand

from pagedllm.layers.kernels.triton_gemv import gemv

LLAMA8B_LINEARS = {
    "qkv_proj": (6144, 4096),
    "o_proj": (4096, 4096),
    "gate_up_proj": (28672, 4096),
    "down_proj": (4096, 14336),
}
WITH_LM_HEAD = {**LLAMA8B_LINEARS, "lm_head": (128256, 4096)}


def _rotating(fn: Callable[[torch.Tensor], object], weights: list[torch.Tensor]) -> Fn:
    """Each call uses the next weight copy, so that no call finds its weight in L2."""
    state = {"i": 0}

    def call() -> object:
        state["i"] = (state["i"] + 1) % len(weights)
        return fn(weights[state["i"]])

    return call


def _each_weight(
    shapes: dict[str, tuple[int, int]],
) -> Iterator[tuple[str, int, int, list[torch.Tensor]]]:
    """(name, N, K, weight copies) per layer; the copies are freed before the next."""
    for name, (n, k) in shapes.items():
        copies = max(2, -(-(256 * 2**20) // (n * k * 2)))  # >= 256 MiB in rotation
        weights = [rand(n, k) for _ in range(copies)]
        yield name, n, k, weights
        del weights
        torch.cuda.empty_cache()


def _linear_row(label: str, m: int, n: int, k: int, ms: float, other_ms: float | None) -> Row:
    return Row(
        label, f"M={m} N={n} K={k}", ms, other_ms, bytes_moved=n * k * 2, flops=2 * m * n * k
    )


def bench_gemv() -> list[Row]:
    """Batch-1/4 decode linear layers: the Triton skinny product against torch's
    F.linear (cuBLAS), then launch configurations of the skinny product at one row."""
    rows = []
    for name, n, k, weights in _each_weight(WITH_LM_HEAD):
        for m in (1, 4):
            x = rand(m, k)
            t = bench(_rotating(partial(gemv, x), weights))
            ref = bench(_rotating(partial(F.linear, x), weights))
            rows.append(Row(f"gemv {name}", f"M={m} N={n} K={k}", t, ref, bytes_moved=n * k * 2))
        for splits, bn, bk, warps, stages in [
            (None, 64, 256, 4, 3),
            (None, 128, 128, 8, 4),
            (1, 64, 128, 4, 4),
        ]:
            x = rand(1, k)
            fn = partial(
                gemv,
                x,
                num_splits=splits,
                block_n=bn,
                block_k=bk,
                num_warps=warps,
                num_stages=stages,
            )
            t = bench(_rotating(fn, weights))
            cfg = f"M=1 N={n} splits={splits} bn={bn} bk={bk} w={warps} st={stages}"
            rows.append(Row(f"gemv {name} cfg", cfg, t, bytes_moved=n * k * 2))
    return rows


def bench_skinny_gemm() -> list[Row]:
    """cuBLAS (F.linear) at the decode batch sizes of T2's tail and middle: does any row
    count fall off the bandwidth line? The 'triton ms' column is cuBLAS here, the
    'torch ms' column the Triton skinny product where it applies (up to 16 rows)."""
    rows = []
    for name, n, k, weights in _each_weight(LLAMA8B_LINEARS):
        for m in (1, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256):
            x = rand(m, k)
            t = bench(_rotating(partial(F.linear, x), weights))
            tri = bench(_rotating(partial(gemv, x), weights)) if m <= 16 else None
            rows.append(_linear_row(f"cublas {name}", m, n, k, t, tri))
    return rows


def bench_blas_choice() -> list[Row]:
    """F.linear through cuBLAS and through cuBLASLt (torch's preferred_blas_library) at
    the decode row counts: 'triton ms' column = cuBLAS, 'torch ms' column = cuBLASLt."""
    rows = []
    for name, n, k, weights in _each_weight(LLAMA8B_LINEARS):
        for m in (1, 16, 64, 128, 256):
            x = rand(m, k)
            times = []
            for lib in ("cublas", "cublaslt"):
                torch.backends.cuda.preferred_blas_library(lib)
                times.append(bench(_rotating(partial(F.linear, x), weights)))
            torch.backends.cuda.preferred_blas_library("default")
            rows.append(_linear_row(f"blas {name}", m, n, k, times[0], times[1]))
    return rows


def bench_host_mm() -> list[Row]:
    """Host (CPU) time of launching a prefill-sized F.linear without waiting for it:
    if this is near the device time, prefill steps are launch-bound on the host."""
    rows = []
    for name, (n, k) in LLAMA8B_LINEARS.items():
        w = rand(n, k)
        for m in (8192, 8000, 7777):
            x = rand(m, k)
            for _ in range(3):
                F.linear(x, w)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(20):
                F.linear(x, w)
            host = (time.perf_counter() - start) / 20 * 1e3
            torch.cuda.synchronize()
            dev = bench(partial(F.linear, x, w), rep=50)
            rows.append(
                Row(f"host launch {name}", f"M={m} host ms={host:.3f}", dev, flops=2 * m * n * k)
            )
    return rows
