"""What the H200 tile sweeps of the MoE kernels (gpu_moe_small_sweep.py,
gpu_moe_grouped_sweep.py) share: timestamped progress lines, the relative error against a
reference, CUDA-graph timing of calls that cycle weight copies, and the rewrite of a table
literal in the module a sweep tunes (`--write`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

START = time.perf_counter()
Call = Callable[[int], Any]  # weight-copy index -> launch


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def graph_time_us(call: Call, device: str, copies: int, per_graph: int, replays: int) -> float:
    """Microseconds per call: `per_graph` calls cycling the `copies` weight copies (so
    the L2 never holds the next call's weights) captured in one CUDA graph, replayed
    `replays` times, timed by CUDA events. Off CUDA (--smoke) one plain call."""
    if device != "cuda":
        start = time.perf_counter()
        call(0)
        return (time.perf_counter() - start) * 1e6
    for copy in range(copies):
        call(copy)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(per_graph):
            call(i % copies)
    graph.replay()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) * 1e3 / (replays * per_graph)


def replace_literal(path: str, marker: str, source: str) -> None:
    """Rewrites the module at `path` from the line starting with `marker` to the end of
    the table literal it opens (the first line at column 0 that is `}`; or that line
    itself where it ends with `{}`, an empty table) with `source`."""
    with open(path) as f:
        text = f.read()
    start = text.index(marker)
    first_line = text[start : text.index("\n", start)]
    if first_line.endswith("{}"):
        end = start + len(first_line) + 1
    else:
        end = text.index("\n}\n", start) + 3
    with open(path, "w") as f:
        f.write(text[:start] + source + text[end:])
