"""Prometheus metrics with vLLM's names under a `pagedllm:` prefix, in a registry
owned by one app (so that several servers can live in one process).

Fed by AsyncLLM's loop thread (prometheus_client metrics are thread-safe):
gauges and counters from the engine's cumulative SchedulerStats, histograms from
the RequestMetrics of requests as they finish.

Several API servers (`--api-server-count N`): prometheus_client's multiprocess mode
(the parent sets PROMETHEUS_MULTIPROC_DIR for its servers), so whichever server
answers /metrics reports the sum over all of them. The engine-wide series (the
gauges, token/preemption/prefix-cache counters, request_success: the core's own
cumulative figures, which every server receives) are published by server 0 alone
(`engine_stats`), so they are not counted N times; the request histograms (TTFT,
latencies, token counts) are each server's own requests, summed. The process
collectors (process_*, python_gc_*) are left out in that mode.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from pagedllm.config import EngineConfig
from pagedllm.engine.async_stats import FinishedOutput
from pagedllm.outputs import RequestMetrics, RequestOutput, SchedulerStats

logger = logging.getLogger(__name__)

PREFIX = "pagedllm:"
FINISH_REASONS = ("stop", "length", "abort")
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0]
TTFT_BUCKETS += [2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0]
ITL_BUCKETS += [2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0]
LATENCY_BUCKETS += [50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]


def _token_buckets(max_model_len: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to max_model_len (vLLM's build_1_2_5_buckets)."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return buckets
            buckets.append(value)
        exponent += 1


class PrometheusStatLogger:
    """A StatLoggerBase that publishes to `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        model_name: str,
        config: EngineConfig,
        engine_stats: bool = True,
    ) -> None:
        self.registry = registry
        self.engine_stats = engine_stats  # publish the engine-wide series (server 0)
        self._labels = {"model_name": model_name}
        self._last = SchedulerStats()
        self._make_gauges(config)
        self._make_counters()
        self._make_histograms(config.model_config.max_model_len)

    def _gauge(self, name: str, doc: str) -> Gauge:
        gauge = Gauge(
            PREFIX + name,
            doc,
            list(self._labels),
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        return gauge.labels(**self._labels)  # type: ignore[no-any-return]

    def _counter(self, name: str, doc: str) -> Counter:
        counter = Counter(PREFIX + name, doc, list(self._labels), registry=self.registry)
        return counter.labels(**self._labels)  # type: ignore[no-any-return]

    def _histogram(self, name: str, doc: str, buckets: list[float]) -> Histogram:
        hist = Histogram(
            PREFIX + name, doc, list(self._labels), buckets=buckets, registry=self.registry
        )
        return hist.labels(**self._labels)  # type: ignore[no-any-return]

    def _make_gauges(self, config: EngineConfig) -> None:
        self.running = self._gauge("num_requests_running", "Requests in the running batch.")
        self.waiting = self._gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = self._gauge("kv_cache_usage_perc", "KV cache usage (1 = 100%).")
        self.gpu_usage = self._gauge(
            "gpu_cache_usage_perc", "Deprecated alias of kv_cache_usage_perc."
        )
        cache = config.cache_config
        info = Gauge(
            PREFIX + "cache_config_info",
            "Information of the KV cache config.",
            ["model_name", "block_size", "num_gpu_blocks", "enable_prefix_caching"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        info.labels(
            model_name=self._labels["model_name"],
            block_size=str(cache.block_size),
            num_gpu_blocks=str(cache.num_gpu_blocks),
            enable_prefix_caching=str(cache.enable_prefix_caching),
        ).set(1)

    def _make_counters(self) -> None:
        self.prompt_tokens = self._counter("prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = self._counter("generation_tokens", "Generation tokens processed.")
        self.preemptions = self._counter("num_preemptions", "Cumulative number of preemptions.")
        self.cache_queries = self._counter(
            "prefix_cache_queries", "Prefix cache lookups, in tokens."
        )
        self.cache_hits = self._counter("prefix_cache_hits", "Prefix cache hits, in tokens.")
        self.cpu_cache_hits = self._counter(
            "cpu_prefix_cache_hits",
            "Prefix cache hits served from the CPU tier (swap_space), in tokens; "
            "counted in prefix_cache_hits too.",
        )
        self.swapped_out = self._counter(
            "kv_swapped_out_blocks", "KV blocks copied to the CPU tier (swap, prefix spill)."
        )
        self.swapped_in = self._counter(
            "kv_swapped_in_blocks", "KV blocks copied back from the CPU tier."
        )
        success = Counter(
            PREFIX + "request_success",
            "Finished requests, by finish reason.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        self.success = {
            r: success.labels(finished_reason=r, **self._labels) for r in FINISH_REASONS
        }
        self._success_family = success

    def _make_histograms(self, max_model_len: int) -> None:
        self.ttft = self._histogram(
            "time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS
        )
        self.itl = self._histogram(
            "inter_token_latency_seconds", "Inter-token latency.", ITL_BUCKETS
        )
        self.tpot = self._histogram(
            "time_per_output_token_seconds",
            "Time per output token (vLLM's older name).",
            ITL_BUCKETS,
        )
        self.e2e = self._histogram(
            "e2e_request_latency_seconds", "End-to-end request latency.", LATENCY_BUCKETS
        )
        self.queue = self._histogram(
            "request_queue_time_seconds", "Time from arrival to first scheduling.", LATENCY_BUCKETS
        )
        tokens = _token_buckets(max_model_len)
        self.req_prompt = self._histogram(
            "request_prompt_tokens", "Prompt tokens per request.", tokens
        )
        self.req_gen = self._histogram(
            "request_generation_tokens", "Generation tokens per request.", tokens
        )

    # ---- StatLoggerBase -----------------------------------------------------------------

    def record(self, stats: SchedulerStats, finished: list[FinishedOutput]) -> None:
        if self.engine_stats:
            self._record_engine(stats)
        for output in finished:
            if output.metrics is not None:
                self._observe_request(output, output.metrics)

    def _record_engine(self, stats: SchedulerStats) -> None:
        self.running.set(stats.num_running_reqs)
        self.waiting.set(stats.num_waiting_reqs)
        self.kv_usage.set(stats.kv_cache_usage)
        self.gpu_usage.set(stats.kv_cache_usage)
        last = self._last
        _inc(self.prompt_tokens, stats.prompt_tokens - last.prompt_tokens)
        _inc(self.generation_tokens, stats.generation_tokens - last.generation_tokens)
        _inc(self.preemptions, stats.num_preemptions - last.num_preemptions)
        _inc(self.cache_queries, stats.prefix_cache_queries - last.prefix_cache_queries)
        _inc(self.cache_hits, stats.prefix_cache_hits - last.prefix_cache_hits)
        _inc(self.cpu_cache_hits, stats.cpu_prefix_cache_hits - last.cpu_prefix_cache_hits)
        _inc(self.swapped_out, stats.kv_swapped_out_blocks - last.kv_swapped_out_blocks)
        _inc(self.swapped_in, stats.kv_swapped_in_blocks - last.kv_swapped_in_blocks)
        for reason, count in stats.finished_reasons.items():
            delta = count - last.finished_reasons.get(reason, 0)
            if delta > 0:
                child = self.success.get(reason)
                if child is None:
                    child = self._success_family.labels(finished_reason=reason, **self._labels)
                    self.success[reason] = child
                child.inc(delta)
        self._last = SchedulerStats(
            **{**vars(stats), "finished_reasons": dict(stats.finished_reasons)}
        )

    def _observe_request(self, output: FinishedOutput, m: RequestMetrics) -> None:
        end = m.finished_time or m.last_token_time
        if end is not None and end >= m.arrival_time:
            self.e2e.observe(end - m.arrival_time)
        if m.first_scheduled_time is not None and m.first_scheduled_time >= m.arrival_time:
            self.queue.observe(m.first_scheduled_time - m.arrival_time)
        self.req_prompt.observe(len(output.prompt_token_ids))
        if not isinstance(output, RequestOutput):
            return
        self.req_gen.observe(sum(len(c.token_ids) for c in output.outputs))
        if m.first_token_time is not None and m.first_token_time >= m.arrival_time:
            self.ttft.observe(m.first_token_time - m.arrival_time)
        num = m.num_generation_tokens
        if m.first_token_time is not None and m.last_token_time is not None and num > 1:
            # One observation per gap, at the request's mean gap (the engine keeps no per-token times).
            gap = max(m.last_token_time - m.first_token_time, 0.0) / (num - 1)
            for _ in range(num - 1):
                self.itl.observe(gap)
                self.tpot.observe(gap)

    def log(self) -> None:
        """Prometheus is pulled; nothing to push."""

    def render(self) -> bytes:
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not path:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # every server's files, summed
        MultiProcessCollector(registry, path)
        return generate_latest(registry)


def _inc(counter: Counter, delta: float) -> None:
    if delta > 0:
        counter.inc(delta)
