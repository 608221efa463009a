"""The dashboard's snapshot, sampled from the engine core at a bounded rate and
shared by every watcher.

Nothing runs while nobody watches: a snapshot is taken when a page's event stream or
a script asks for one and the cached one is older than the sampling interval. The
interval is `min_interval_s` (4 Hz), stretched so that building the core's part (a
utility call, answered between steps) takes at most `max_core_share` of the core's
time: a pool of hundreds of thousands of blocks is sampled less often, never per step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.entrypoints.dashboard.history import DashboardStatLogger

logger = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.25
MAX_CORE_SHARE = 0.02
MAX_CELLS = 8192  # block-map cells (more blocks fold several into one cell)
MAX_REQUESTS = 100  # listed per queue (the counts are always exact)
CALL_TIMEOUT_S = 10.0


def engine_summary(config: EngineConfig, version: str) -> dict[str, Any]:
    """The configuration the page shows (fixed for the server's life)."""
    model, cache = config.model_config, config.cache_config
    sched, parallel = config.scheduler_config, config.parallel_config
    return {
        "version": version,
        "model": model.model,
        "served_model_name": model.served_model_name,
        "dtype": str(model.dtype).removeprefix("torch."),
        "quantization": model.quantization,
        "kv_cache_dtype": cache.kv_cache_dtype,
        "device": str(config.device_config.device),
        "tensor_parallel_size": parallel.tensor_parallel_size,
        "pipeline_parallel_size": parallel.pipeline_parallel_size,
        "distributed_executor_backend": parallel.distributed_executor_backend,
        "block_size": cache.block_size,
        "num_gpu_blocks": cache.num_gpu_blocks,
        "enable_prefix_caching": cache.enable_prefix_caching,
        "max_model_len": model.max_model_len,
        "max_num_seqs": sched.max_num_seqs,
        "max_num_batched_tokens": sched.max_num_batched_tokens,
        "enable_chunked_prefill": sched.enable_chunked_prefill,
        "async_scheduling": sched.async_scheduling,
        "enforce_eager": config.enforce_eager,
    }


class DashboardSampler:
    def __init__(
        self,
        engine: AsyncLLM,
        history: DashboardStatLogger,
        config: dict[str, Any],
        closing: Callable[[], bool] = lambda: False,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.engine = engine
        self.history = history
        self.config = config
        self.closing = closing  # True once the server shuts down: the streams end
        self.min_interval_s = min_interval_s
        self.interval_s = min_interval_s
        self.watchers = 0
        self.num_samples = 0
        self._lock = asyncio.Lock()
        self._latest: dict[str, Any] | None = None
        self._latest_json = ""  # the latest snapshot without its history, encoded once
        self._taken = 0.0

    async def snapshot(self) -> dict[str, Any]:
        """The latest snapshot, taken now if the cached one is older than the interval."""
        async with self._lock:
            if self._latest is None or time.monotonic() - self._taken >= self.interval_s:
                await self._refresh()
            assert self._latest is not None
            return self._latest

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events: one snapshot per interval; the first one carries the whole
        history, later ones only the points that are new."""
        self.watchers += 1
        try:
            version, since = -1, 0.0
            while not self.closing():
                latest = await self.snapshot()
                if latest["version"] != version:
                    version = latest["version"]
                    points = self.history.points(since)
                    since = points[-1]["t"] if points else since
                    yield _with_history(self._latest_json, points)
                await asyncio.sleep(self.interval_s)
        finally:
            self.watchers -= 1

    async def _refresh(self) -> None:
        engine = self.engine
        self.history.sample(engine.get_stats())
        core, error = await self._core_snapshot()
        build_s = float(core.get("build_s", 0.0)) if core else 0.0
        self.interval_s = max(self.min_interval_s, build_s / MAX_CORE_SHARE)
        self.num_samples += 1
        body: dict[str, Any] = {
            "version": self.num_samples,
            "time": time.time(),
            "engine": {"healthy": error is None, "error": error},
            "config": self.config,
            "kv": core.get("kv") if core else None,
            "queue": core.get("queue") if core else None,
            "counters": core.get("counters") if core else None,
            "latency": self.history.latency_summary(),
            "sample_interval_s": self.interval_s,
            "core_build_s": build_s,
        }
        self._latest_json = json.dumps(body, separators=(",", ":"))
        self._latest = {**body, "history": self.history.points()}
        self._taken = time.monotonic()

    async def _core_snapshot(self) -> tuple[dict[str, Any] | None, str | None]:
        if self.engine.errored:
            return None, str(self.engine.dead_error)
        try:
            call = asyncio.to_thread(
                self.engine.call_utility, "dashboard_snapshot", MAX_CELLS, MAX_REQUESTS
            )
            return await asyncio.wait_for(call, CALL_TIMEOUT_S), None
        except Exception as exc:  # noqa: BLE001 - the page shows why, the server goes on
            logger.warning("Dashboard snapshot failed: %s: %s", type(exc).__name__, exc)
            return None, f"{type(exc).__name__}: {exc}"


def _with_history(body_json: str, points: list[dict[str, Any]]) -> str:
    """One SSE event: the encoded snapshot with `history` spliced in."""
    history = json.dumps(points, separators=(",", ":"))
    return f'data: {body_json[:-1]},"history":{history}}}\n\n'
