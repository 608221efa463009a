"""The dashboard's time series, from the server's own stats: a StatLoggerBase that
AsyncLLM feeds like the Prometheus logger (the cumulative SchedulerStats after each
step, the finished requests' metrics). Work per call is O(1) plus O(finished
requests); a history point is cut at most once per `interval_s`.

A point: {"t", "prompt_tps", "generation_tps", "kv_usage", "hit_rate", "running",
"waiting", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99"} (rates over the interval
since the previous point; latencies of the requests finished in it; null when none).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

from pagedllm.engine.async_stats import FinishedOutput
from pagedllm.outputs import RequestOutput, SchedulerStats

HISTORY_S = 600.0  # ten minutes of points
LATENCY_WINDOW_S = 300.0  # the percentiles' window
MAX_LATENCIES = 50_000


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[rank]


def request_latencies(output: FinishedOutput) -> tuple[float, float | None] | None:
    """(TTFT, TPOT) of a finished generation request, in seconds (TPOT None with one token)."""
    m = output.metrics
    if not isinstance(output, RequestOutput) or m is None or m.first_token_time is None:
        return None
    ttft = m.first_token_time - m.arrival_time
    if m.last_token_time is None or m.num_generation_tokens < 2:
        return ttft, None
    gap = (m.last_token_time - m.first_token_time) / (m.num_generation_tokens - 1)
    return ttft, max(gap, 0.0)


class DashboardStatLogger:
    """A StatLoggerBase: history points and a window of request latencies."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._points: deque[dict[str, Any]] = deque(maxlen=int(HISTORY_S / interval_s) + 1)
        self._latencies: deque[tuple[float, float, float | None]] = deque(maxlen=MAX_LATENCIES)
        self._pending: list[tuple[float, float | None]] = []  # finished since the last point
        self._last_stats = SchedulerStats()
        self._last_time = time.time()

    # ---- StatLoggerBase (AsyncLLM's reader thread) ------------------------------------

    def record(self, stats: SchedulerStats, finished: list[FinishedOutput]) -> None:
        now = time.time()
        with self._lock:
            for output in finished:
                latencies = request_latencies(output)
                if latencies is not None:
                    self._pending.append(latencies)
                    self._latencies.append((now, *latencies))
            if not self._points or now - self._last_time >= self.interval_s:
                self._cut(stats, now)

    def log(self) -> None:
        """Nothing to push."""

    # ---- readers (the event loop) ---------------------------------------------------------

    def sample(self, stats: SchedulerStats) -> None:
        """Cut a point if one is due (called by the dashboard, so idle time shows as zeros)."""
        self.record(stats, [])

    def points(self, since: float = 0.0) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self._points if p["t"] > since]

    def latency_summary(self, window_s: float = LATENCY_WINDOW_S) -> dict[str, Any]:
        """TTFT and TPOT percentiles (seconds) over the requests finished in the window."""
        cutoff = time.time() - window_s
        with self._lock:
            recent = [(ttft, tpot) for t, ttft, tpot in self._latencies if t >= cutoff]
        ttfts = sorted(ttft for ttft, _ in recent)
        tpots = sorted(tpot for _, tpot in recent if tpot is not None)
        summary: dict[str, Any] = {"window_s": window_s, "num_requests": len(recent)}
        for name, values in (("ttft", ttfts), ("tpot", tpots)):
            summary[name] = {f"p{q}": percentile(values, q) for q in (50, 90, 99)}
        return summary

    # ---- internals ------------------------------------------------------------------------

    def _cut(self, stats: SchedulerStats, now: float) -> None:
        last = self._last_stats
        elapsed = max(now - self._last_time, 1e-6)
        queries = stats.prefix_cache_queries - last.prefix_cache_queries
        hits = stats.prefix_cache_hits - last.prefix_cache_hits
        ttfts = sorted(t for t, _ in self._pending)
        tpots = sorted(t for _, t in self._pending if t is not None)
        self._points.append(
            {
                "t": round(now, 3),
                "prompt_tps": max(0, stats.prompt_tokens - last.prompt_tokens) / elapsed,
                "generation_tps": max(0, stats.generation_tokens - last.generation_tokens)
                / elapsed,
                "kv_usage": stats.kv_cache_usage,
                "hit_rate": hits / queries if queries > 0 else None,
                "running": stats.num_running_reqs,
                "waiting": stats.num_waiting_reqs,
                "ttft_p50": percentile(ttfts, 50),
                "ttft_p99": percentile(ttfts, 99),
                "tpot_p50": percentile(tpots, 50),
                "tpot_p99": percentile(tpots, 99),
            }
        )
        self._pending = []
        self._last_stats = stats
        self._last_time = now
