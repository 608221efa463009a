"""Stat loggers fed by AsyncLLM's loop thread: the periodic log line (here) and
Prometheus (`pagedllm.entrypoints.openai.metrics`)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from pagedllm.outputs import PoolingRequestOutput, RequestOutput, SchedulerStats

logger = logging.getLogger("pagedllm.engine")

FinishedOutput = RequestOutput | PoolingRequestOutput


class StatLoggerBase(Protocol):
    """Called from the engine loop thread only."""

    def record(self, stats: SchedulerStats, finished: list[FinishedOutput]) -> None:
        """After each step (and when idle): the latest cumulative stats and the
        outputs of the requests that finished in that step."""

    def log(self) -> None:
        """Every few seconds."""


class LoggingStatLogger:
    """vLLM's periodic throughput line, logged while there is (or just was) traffic."""

    def __init__(self) -> None:
        self._stats = SchedulerStats()
        self._last_prompt_tokens = 0
        self._last_generation_tokens = 0
        self._last_queries = 0
        self._last_hits = 0
        self._last_time = time.monotonic()
        self._was_active = False

    def record(self, stats: SchedulerStats, finished: list[FinishedOutput]) -> None:
        self._stats = stats

    def log(self) -> None:
        now = time.monotonic()
        stats = self._stats
        elapsed = max(now - self._last_time, 1e-6)
        prompt = stats.prompt_tokens - self._last_prompt_tokens
        generation = stats.generation_tokens - self._last_generation_tokens
        queries = stats.prefix_cache_queries - self._last_queries
        hits = stats.prefix_cache_hits - self._last_hits
        active = bool(prompt or generation or stats.num_running_reqs or stats.num_waiting_reqs)
        if active or self._was_active:
            logger.info(
                "Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                "Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%, "
                "Prefix cache hit rate: %.1f%%",
                prompt / elapsed,
                generation / elapsed,
                stats.num_running_reqs,
                stats.num_waiting_reqs,
                stats.kv_cache_usage * 100,
                100.0 * hits / queries if queries else 0.0,
            )
        self._was_active = active
        self._last_time = now
        self._last_prompt_tokens = stats.prompt_tokens
        self._last_generation_tokens = stats.generation_tokens
        self._last_queries = stats.prefix_cache_queries
        self._last_hits = stats.prefix_cache_hits
