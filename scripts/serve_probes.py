"""What `gpu_serve.py` and `serve_client_cost.py` read of a running server from outside:
CPU seconds of its processes (Linux /proc) and the sums and counts of its latency
histograms (`/metrics`)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    pids: list[int] = []
    for task in tasks:
        try:
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return pids


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds of the front end (the server's process and, with --api-server-count
    N > 1, its API-server children, summed) and of the engine core (with its children)."""
    front_end, core = cpu_seconds(server_pid), 0.0
    for child in child_pids(server_pid):
        try:
            is_core = b"engine_core_proc" in Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if is_core:
            core += cpu_seconds(child) + sum(cpu_seconds(c) for c in child_pids(child))
        else:
            front_end += cpu_seconds(child)
    return {"front_end": front_end, "core": core, "wall": time.monotonic()}


def cpu_share(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    wall = max(after["wall"] - before["wall"], 1e-9)
    return {k: (after[k] - before[k]) / wall for k in ("front_end", "core")}


SERVER_HISTOGRAMS = (
    "time_to_first_token_seconds",
    "request_queue_time_seconds",
    "e2e_request_latency_seconds",
)


def server_metrics(port: int) -> dict[str, float]:
    """The sums and counts of the server's latency histograms (its own clock: from the
    request's arrival at the engine, after tokenization, to the core's first token)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        for name in SERVER_HISTOGRAMS:
            for part in ("_sum", "_count"):
                if line.startswith(f"pagedllm:{name}{part}{{"):
                    values[name + part] = float(line.rsplit(" ", 1)[1])
    return values


def server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    means: dict[str, float] = {}
    for name in SERVER_HISTOGRAMS:
        count = after.get(name + "_count", 0.0) - before.get(name + "_count", 0.0)
        total = after.get(name + "_sum", 0.0) - before.get(name + "_sum", 0.0)
        if count > 0:
            means[name.replace("_seconds", "")] = round(1000 * total / count, 2)
    return means
