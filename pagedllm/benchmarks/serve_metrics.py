"""The metrics of `pagedllm bench serve`, computed and named as vLLM's `bench serve`:

    TTFT  time to first token: sending the request -> its first content chunk
    TPOT  time per output token after the first, per request:
          (latency - ttft) / (output_tokens - 1), for requests with more than one token
    ITL   inter-token latency: every gap between two content chunks of a stream
    E2EL  end-to-end latency of a request

Throughputs count successful requests only. Result keys: `request_throughput`,
`output_throughput`, `total_token_throughput`, `mean_ttft_ms`, `median_ttft_ms`,
`std_ttft_ms`, `p99_ttft_ms`, ... (the same for tpot, itl, e2el)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pagedllm.benchmarks.serve_client import RequestFuncOutput

METRIC_NAMES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
}


def percentile_key(p: float) -> str:
    """vLLM's spelling of a percentile in a key: 99 -> "99", 99.9 -> "99.9"."""
    return str(int(p)) if int(p) == p else str(p)


def _samples_s(outputs: list[RequestFuncOutput]) -> dict[str, list[float]]:
    """Each metric's samples in seconds, over the successful requests."""
    ok = [o for o in outputs if o.success]
    return {
        "ttft": [o.ttft for o in ok],
        "tpot": [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1],
        "itl": [gap for o in ok for gap in o.itl],
        "e2el": [o.latency for o in ok],
    }


def _summary_ms(name: str, samples_s: list[float], percentiles: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    empty = ms.size == 0
    stats = {
        f"mean_{name}_ms": 0.0 if empty else float(ms.mean()),
        f"median_{name}_ms": 0.0 if empty else float(np.median(ms)),
        f"std_{name}_ms": 0.0 if empty else float(ms.std()),
    }
    for p in percentiles:
        stats[f"p{percentile_key(p)}_{name}_ms"] = 0.0 if empty else float(np.percentile(ms, p))
    return stats


def max_concurrent_requests(outputs: list[RequestFuncOutput]) -> int:
    """The most requests in flight at one moment (from their start and end times)."""
    events = sorted(
        [(o.start_time, 1) for o in outputs] + [(o.start_time + o.latency, -1) for o in outputs]
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def calculate_metrics(
    outputs: list[RequestFuncOutput],
    duration_s: float,
    metrics: list[str],
    percentiles: list[float],
) -> dict[str, Any]:
    """vLLM's aggregate result of one run (without the per-request lists)."""
    unknown = set(metrics) - set(METRIC_NAMES)
    if unknown:
        raise ValueError(
            f"--percentile-metrics: unknown {sorted(unknown)}; use {sorted(METRIC_NAMES)}"
        )
    ok = [o for o in outputs if o.success]
    total_input = sum(o.prompt_len for o in ok)
    total_output = sum(o.output_tokens for o in ok)
    result: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(outputs) - len(ok),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
        "max_concurrent_requests": max_concurrent_requests(outputs),
    }
    samples = _samples_s(outputs)
    for name in metrics:
        result.update(_summary_ms(name, samples[name], percentiles))
    return result


def format_report(result: dict[str, Any], metrics: list[str], percentiles: list[float]) -> str:
    """The table vLLM prints at the end of `bench serve`."""
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: Any) -> None:
        text = f"{value:<10.2f}" if isinstance(value, float) else f"{value:<10}"
        lines.append(f"{label:<40}{text}")

    row("Successful requests:", result["completed"])
    row("Failed requests:", result["failed"])
    if result.get("max_concurrency"):
        row("Maximum request concurrency:", result["max_concurrency"])
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"])
    row("Total generated tokens:", result["total_output_tokens"])
    row("Request throughput (req/s):", result["request_throughput"])
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Total Token throughput (tok/s):", result["total_token_throughput"])
    row("Peak concurrent requests:", result["max_concurrent_requests"])
    for name in metrics:
        lines.append("{s:{c}^{n}}".format(s=METRIC_NAMES[name], n=50, c="-"))
        upper = name.upper()
        row(f"Mean {upper} (ms):", result[f"mean_{name}_ms"])
        row(f"Median {upper} (ms):", result[f"median_{name}_ms"])
        for p in percentiles:
            key = percentile_key(p)
            row(f"P{key} {upper} (ms):", result[f"p{key}_{name}_ms"])
    lines.append("=" * 50)
    return "\n".join(lines)
