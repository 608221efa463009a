"""Workload S1 (shared/BENCHMARKS.md) in one command on the GPU machine:

1. write the S1 model directory (Qwen3-0.6B shape, dummy weights, word-level tokenizer);
2. offline: the same requests through LLM.generate as token ids, after a warm-up (in a
   child process, so that the GPU is wholly free again when it exits);
3. the OpenAI server in a subprocess; after /health and a short warm-up, `pagedllm
   bench serve` at each --rates value (1,000 prompts of 1,024 random words, 128 output
   tokens, ignore_eos, temperature 1.0, seed 0), results saved as JSON under $OUT;
4. a table last: output tok/s, TTFT p50/p99, TPOT p50, ITL p50/p99, and server/offline.

    python scripts/gpu_serve.py                      # the whole S1 (a few minutes)
    python scripts/gpu_serve.py --num-prompts 100 --skip-offline    # a quick look
    python scripts/gpu_serve.py --api-server-count 4   # S1 with 4 API-server processes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from serve_probes import cpu_share, cpu_snapshot, server_means, server_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
ENGINE_KWARGS: dict[str, Any] = dict(
    load_format="dummy", max_model_len=4096, gpu_memory_utilization=0.9
)
# --tiny: a check of this script on the CPU (a 2-layer model, small KV cache).
TINY_KWARGS: dict[str, Any] = dict(
    load_format="dummy", max_model_len=256, kv_cache_memory_bytes=32 << 20, device="cpu"
)
TINY_SHAPE: dict[str, Any] = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, torch_dtype="float32",
)  # fmt: skip
# The whole script stays under 8 minutes: every step's timeout is cut to what is left
# of this budget (a normal S1 run takes 2-3 minutes on an H200).
DEADLINE = time.monotonic() + 450


def time_left(cap_s: float) -> float:
    left = DEADLINE - time.monotonic()
    if left <= 0:
        raise TimeoutError("gpu_serve.py: out of its time budget")
    return min(cap_s, left)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_serve.py")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--rates", default="inf,20", help="request rates, comma-separated")
    p.add_argument("--skip-offline", action="store_true")
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--tiny", action="store_true", help="check this script on the CPU")
    p.add_argument("--server-flags", default="", help="extra flags for the server, one string")
    p.add_argument(
        "--api-server-count",
        type=int,
        default=1,
        help="the server's --api-server-count (API-server processes sharing one engine core)",
    )
    p.add_argument(
        "--py-spy",
        default=None,
        help="a py-spy binary: sample the server and its engine core during each rate's run "
        "(raw stacks with idle frames, per thread) into $OUT/prof_rate_<rate>.txt",
    )
    p.add_argument("--offline-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def s1_requests(model_dir: str, args: argparse.Namespace) -> list[Any]:
    """Exactly the requests bench serve sends (same tokenizer, lengths and seed)."""
    from transformers import AutoTokenizer

    from pagedllm.benchmarks.serve_dataset import sample_random_requests

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sample_random_requests(tokenizer, args.num_prompts, args.input_len, args.output_len)


def offline_child(args: argparse.Namespace) -> None:
    """Runs in the child process: the timed LLM.generate, its result written as JSON."""
    from pagedllm import LLM, SamplingParams
    from pagedllm.gc_utils import maybe_attach_gc_debug_callback

    requests = s1_requests(args.model_dir, args)
    llm = LLM(model=args.model_dir, **(TINY_KWARGS if args.tiny else ENGINE_KWARGS))
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = SamplingParams(
        temperature=1.0, ignore_eos=True, max_tokens=args.output_len, detokenize=False
    )
    llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
    gc_debug = maybe_attach_gc_debug_callback("offline")  # PAGEDLLM_GC_DEBUG=1: GC counted
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    gc_totals = gc_debug.totals() if gc_debug is not None else None  # the timed call's
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    llm.shutdown()
    result: dict[str, Any] = dict(
        elapsed_s=elapsed, output_tokens=produced, output_throughput=produced / elapsed
    )
    if gc_totals is not None:  # [count, ms] by generation over the timed run
        result["gc_by_generation"] = gc_totals
    Path(args.offline_child).write_text(json.dumps(result))


def run_step(cmd: list[str], log_path: Path | None) -> int:
    """Run a child to completion within the time budget; its exit code (124: timed out)."""
    try:
        if log_path is None:
            return subprocess.run(cmd, env=ENV, timeout=time_left(240)).returncode
        with open(log_path, "wb") as log:
            return subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, timeout=time_left(240)
            ).returncode
    except (subprocess.TimeoutExpired, TimeoutError):
        print(f"TIMED OUT: {' '.join(cmd[:4])} ...", flush=True)
        return 124


def run_offline(model_dir: str, args: argparse.Namespace, out: Path) -> dict[str, Any] | None:
    path = out / "s1_offline.json"
    cmd = [sys.executable, __file__, "--offline-child", str(path), "--model-dir", model_dir]
    cmd += ["--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len)]
    cmd += ["--output-len", str(args.output_len), *(["--tiny"] if args.tiny else [])]
    print(f"=== offline: {args.num_prompts} requests through LLM.generate ===", flush=True)
    code = run_step(cmd, None)
    if code != 0 or not path.is_file():
        print(f"offline run FAILED (exit code {code})", flush=True)
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    print(f"offline: {result['output_throughput']:,.1f} output tok/s", flush=True)
    if "gc_by_generation" in result:
        print(f"offline GC [count, ms] by generation: {result['gc_by_generation']}", flush=True)
    return result


def engine_flags(kwargs: dict[str, Any]) -> list[str]:
    return [x for k, v in kwargs.items() for x in ("--" + k.replace("_", "-"), str(v))]


def start_server(
    model_dir: str, args: argparse.Namespace, log_path: Path
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pagedllm.entrypoints.openai.api_server", "--model", model_dir]
    cmd += engine_flags(TINY_KWARGS if args.tiny else ENGINE_KWARGS)
    cmd += ["--disable-log-requests", "--disable-uvicorn-access-log", *args.server_flags.split()]
    cmd += ["--api-server-count", str(args.api_server_count)]
    cmd += ["--port", str(args.port)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + time_left(240)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server did not become healthy:\n{log_path.read_text()[-4000:]}")


def bench_serve(model_dir: str, port: int, extra: list[str], log_path: Path) -> int:
    cmd = [sys.executable, "-m", "pagedllm.benchmarks.serve", "--port", str(port)]
    cmd += ["--model", model_dir, "--tokenizer", model_dir, "--ignore-eos"]
    cmd += ["--temperature", "1.0", "--disable-tqdm", *extra]
    code = run_step(cmd, log_path)
    print(log_path.read_text(errors="replace")[-3000:], flush=True)
    return code


def run_server_benchmarks(model_dir: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Start the server, warm it up, run bench serve at each rate; the saved results by
    rate (a rate whose run failed or timed out is missing)."""
    log = out / "server.log"
    server = start_server(model_dir, args, log)
    results: dict[str, Any] = {}
    try:
        start = time.monotonic()
        wait_healthy(server, args.port, log)
        print(f"=== server healthy after {time.monotonic() - start:.1f} s ===", flush=True)
        warm = ["--num-prompts", "16", "--random-input-len", str(args.input_len)]
        warm += ["--random-output-len", "16", "--seed", "1"]
        bench_serve(model_dir, args.port, warm, out / "bench_warmup.log")
        for rate in args.rates.split(","):
            print(f"=== bench serve --request-rate {rate} ===", flush=True)
            name = f"s1_rate_{rate}.json"
            flags = ["--num-prompts", str(args.num_prompts), "--request-rate", rate, "--seed", "0"]
            flags += ["--random-input-len", str(args.input_len)]
            flags += ["--random-output-len", str(args.output_len)]
            flags += ["--save-result", "--result-dir", str(out), "--result-filename", name]
            metrics_before = server_metrics(args.port)
            before = cpu_snapshot(server.pid)
            profiler = start_profiler(args.py_spy, server.pid, out / f"prof_rate_{rate}.txt")
            bench_serve(model_dir, args.port, flags, out / f"bench_rate_{rate}.log")
            if profiler is not None:
                profiler.send_signal(2)  # SIGINT: py-spy writes what it has and exits
                profiler.wait(timeout=60)
            share = cpu_share(before, cpu_snapshot(server.pid))
            seen = server_means(metrics_before, server_metrics(args.port))
            print(f"server-side means over the run (ms): {seen}", flush=True)
            if (out / name).is_file():
                saved = json.loads((out / name).read_text())
                results[rate] = {**saved, "server_cpu": share, "server_means_ms": seen}
    except (RuntimeError, TimeoutError) as exc:
        print(f"server benchmarks FAILED: {exc}", flush=True)
    finally:
        stop(server)
    return results


def start_profiler(py_spy: str | None, pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    if py_spy is None:
        return None
    cmd = [py_spy, "record", "-p", str(pid), "--subprocesses", "--idle", "--threads"]
    cmd += ["-r", "50", "--format", "raw", "-o", str(path), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


HEADER = (
    "| run | output tok/s | TTFT p50 / p99 ms | TPOT p50 ms | ITL p50 / p99 ms "
    "| server/offline | failed | client CPU | front-end CPU | core CPU |"
)


def table(offline: dict[str, Any] | None, served: dict[str, Any], rates: list[str]) -> str:
    """The last lines: one row per run ("client CPU": the bench client's CPU time over
    the run; near 100% the client, not the server, would set the pace)."""
    rows = [HEADER, "|---" * 10 + "|"]
    base = offline["output_throughput"] if offline else None
    if offline:
        rows.append(f"| offline LLM.generate | {base:,.1f} | | | | | | | | |")
    for rate in rates:
        r = served.get(rate)
        if r is None:
            rows.append(f"| server, rate {rate} | FAILED | | | | | | | | |")
            continue
        ratio = f"{r['output_throughput'] / base:.2f}" if base else ""
        rows.append(
            f"| server, rate {rate} | {r['output_throughput']:,.1f} | "
            f"{r['median_ttft_ms']:,.1f} / {r['p99_ttft_ms']:,.1f} | {r['median_tpot_ms']:.2f} | "
            f"{r['median_itl_ms']:.2f} / {r['p99_itl_ms']:.2f} | {ratio} | {r['failed']} | "
            f"{r['client_cpu_util']:.0%} | {r['server_cpu']['front_end']:.0%} | "
            f"{r['server_cpu']['core']:.0%} |"
        )
    return "\n".join(rows)


# What the server and the client import: a missing one fails here, not minutes in.
NEEDED_MODULES = (
    "fastapi", "uvicorn", "pydantic", "prometheus_client", "zmq", "msgspec", "aiohttp",
    "transformers", "tokenizers", "numpy", "tqdm",
)  # fmt: skip


def check_modules() -> None:
    import importlib.util

    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"gpu_serve.py: missing Python packages (carry their wheels): {missing}")


def main() -> None:
    args = parse_args()
    if args.offline_child:
        offline_child(args)
        return
    check_modules()
    from pagedllm.benchmarks.word_model import write_word_model

    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = write_word_model(
        tempfile.mkdtemp(prefix="s1-model-"), **(TINY_SHAPE if args.tiny else {})
    )
    offline = None if args.skip_offline else run_offline(model_dir, args, out)
    served = run_server_benchmarks(model_dir, args, out)
    rates = args.rates.split(",")
    summary = {"offline": offline, "served": {k: _aggregate(v) for k, v in served.items()}}
    (out / "s1_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nS1: {args.num_prompts} requests, {args.input_len} words in, {args.output_len} out")
    print(table(offline, served, rates), flush=True)
    pack_outputs(out)
    if len(served) < len(rates) or (offline is None and not args.skip_offline):
        sys.exit(1)


def pack_outputs(out: Path) -> None:
    """This script's logs, results and profiles into one archive (the device tool brings
    back only a few files per call); the summary stays beside it, other files in $OUT
    (a driver's own logs) are left alone."""
    import tarfile

    mine = ("s1_offline", "s1_rate_", "bench_", "server.log", "prof_rate_")
    files = [p for p in sorted(out.iterdir()) if p.is_file() and p.name.startswith(mine)]
    with tarfile.open(out / "s1_outputs.tar.gz", "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
    for path in files:
        path.unlink()
    print(f"outputs packed into {out / 's1_outputs.tar.gz'}", flush=True)


def _aggregate(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not isinstance(v, list)}


if __name__ == "__main__":
    main()
