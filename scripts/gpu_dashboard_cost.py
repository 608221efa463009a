"""What the live dashboard costs a busy server (issue 20), on the GPU machine.

The offline engine is unaffected by construction (the dashboard lives in the OpenAI
server's front end and asks the core for a snapshot only while someone watches), so
this measures the server: S1's model directory and server flags (scripts/gpu_serve.py),
then `pagedllm bench serve` runs alternately without and with `--watchers` clients
reading /dashboard/events (as open pages do), in the order off, on, off, on. Printed
last: a table of output tok/s, TTFT p50/p99, ITL p50/p99 per run, the watchers' events
per second and bytes per event, and the core's time per snapshot and the sampling
interval it led to (from the events themselves).

    python scripts/gpu_dashboard_cost.py                       # 1,000 prompts, rate inf
    python scripts/gpu_dashboard_cost.py --num-prompts 300 --rate 20
    python scripts/gpu_dashboard_cost.py --tiny --num-prompts 8   # a check on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_serve  # noqa: E402  (this directory's S1 helpers)


class Watcher(threading.Thread):
    """Reads /dashboard/events like an open page: counts events and bytes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/dashboard/events"
        self.stopping = threading.Event()
        self.events = 0
        self.bytes = 0
        self.last: dict[str, Any] = {}
        self.started_at = time.monotonic()

    def run(self) -> None:
        with urllib.request.urlopen(self.url, timeout=60) as stream:
            for raw in stream:
                if self.stopping.is_set():
                    return
                if raw.startswith(b"data: "):
                    self.events += 1
                    self.bytes += len(raw)
                    self.last = json.loads(raw[len(b"data: ") :])

    def summary(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.started_at, 1e-9)
        return {
            "events_per_s": self.events / elapsed,
            "bytes_per_event": self.bytes / max(self.events, 1),
            "core_build_ms": 1000 * float(self.last.get("core_build_s", 0.0)),
            "sample_interval_s": float(self.last.get("sample_interval_s", 0.0)),
            "num_blocks": float((self.last.get("kv") or {}).get("num_blocks", 0)),
        }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_dashboard_cost.py")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--rate", default="inf")
    p.add_argument("--watchers", type=int, default=2, help="event streams open during 'on' runs")
    p.add_argument("--port", type=int, default=8322)
    p.add_argument("--tiny", action="store_true", help="check this script on the CPU")
    p.add_argument("--server-flags", default="", help="extra flags for the server, one string")
    return p.parse_args()


def one_run(
    model_dir: str, args: argparse.Namespace, out: Path, index: int, watched: bool
) -> dict[str, Any] | None:
    name = f"run{index}_{'on' if watched else 'off'}.json"
    watchers = [Watcher(args.port) for _ in range(args.watchers if watched else 0)]
    for w in watchers:
        w.start()
    flags = ["--num-prompts", str(args.num_prompts), "--request-rate", args.rate]
    flags += ["--seed", str(index), "--random-input-len", str(args.input_len)]
    flags += ["--random-output-len", str(args.output_len)]
    flags += ["--save-result", "--result-dir", str(out), "--result-filename", name]
    print(f"=== run {index}: dashboard {'watched' if watched else 'not watched'} ===", flush=True)
    gpu_serve.bench_serve(model_dir, args.port, flags, out / f"bench_{name}.log")
    for w in watchers:
        w.stopping.set()
    if not (out / name).is_file():
        return None
    result: dict[str, Any] = json.loads((out / name).read_text())
    result["watchers"] = [w.summary() for w in watchers]
    return result


def row(index: int, watched: bool, r: dict[str, Any] | None) -> str:
    label = f"| {index} | {'on' if watched else 'off'} |"
    if r is None:
        return label + " FAILED | | | |"
    w = r["watchers"][0] if r["watchers"] else None
    watcher = (
        f"{w['events_per_s']:.1f} ev/s, {w['bytes_per_event'] / 1000:.1f} kB/ev, "
        f"{w['core_build_ms']:.2f} ms/snapshot ({w['num_blocks']:.0f} blocks), "
        f"every {w['sample_interval_s']:.2f} s"
        if w
        else ""
    )
    return (
        f"{label} {r['output_throughput']:,.1f} | {r['median_ttft_ms']:,.1f} / "
        f"{r['p99_ttft_ms']:,.1f} | {r['median_itl_ms']:.2f} / {r['p99_itl_ms']:.2f} | "
        f"{watcher} |"
    )


def main() -> None:
    args = parse_args()
    gpu_serve.check_modules()
    from pagedllm.benchmarks.word_model import write_word_model

    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-dashboard-"))
    out.mkdir(parents=True, exist_ok=True)
    shape = gpu_serve.TINY_SHAPE if args.tiny else {}
    model_dir = write_word_model(tempfile.mkdtemp(prefix="s1-model-"), **shape)
    server_args = argparse.Namespace(tiny=args.tiny, server_flags=args.server_flags, port=args.port)
    log = out / "server.log"
    server = gpu_serve.start_server(model_dir, server_args, log)
    rows = ["| run | dashboard | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | watcher |"]
    rows.append("|---" * 6 + "|")
    try:
        gpu_serve.wait_healthy(server, args.port, log)
        warm = ["--num-prompts", "16", "--random-input-len", str(args.input_len)]
        warm += ["--random-output-len", "16", "--seed", "99"]
        gpu_serve.bench_serve(model_dir, args.port, warm, out / "bench_warmup.log")
        for index, watched in enumerate((False, True, False, True)):
            rows.append(row(index, watched, one_run(model_dir, args, out, index, watched)))
    finally:
        gpu_serve.stop(server)
    print(f"\nDashboard cost: S1-like load, {args.num_prompts} prompts at rate {args.rate}, ")
    print(f"{args.watchers} watcher(s) in the 'on' runs\n" + "\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
