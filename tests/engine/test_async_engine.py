"""AsyncLLM over a scripted engine: streaming, abort on early exit and cancellation,
bad requests, a failing step (recoverable) and a broken engine (dead)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from pagedllm.engine.async_engine import AsyncLLM, EngineDeadError, EngineGenerateError
from pagedllm.engine.async_stats import LoggingStatLogger
from pagedllm.outputs import CompletionOutput, RequestOutput, SchedulerStats
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


class ScriptedEngine:
    """Each request emits one token per step ("t0", "t1", ...) until max_tokens."""

    def __init__(self) -> None:
        self.engine_config = SimpleNamespace(model_config=SimpleNamespace(max_model_len=64))
        self.tokenizer = None
        self.requests: dict[str, tuple[SamplingParams, int]] = {}
        self.aborted: list[str] = []
        self.fail_next_step = False
        self.fail_abort = False
        self.step_thread: threading.Thread | None = None
        self.stats = SchedulerStats()

    def add_request(
        self, request_id: str, prompt: Any, params: Any, arrival_time: float | None = None
    ) -> None:
        if prompt == "":
            raise ValueError("The prompt cannot be empty")
        self.requests[request_id] = (params, 0)

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        if self.fail_abort:
            raise RuntimeError("abort is broken too")
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        for rid in ids:
            self.requests.pop(rid, None)
            self.aborted.append(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        self.step_thread = threading.current_thread()
        time.sleep(0.001)
        if self.fail_next_step:
            self.fail_next_step = False
            raise RuntimeError("the model exploded")
        outputs = []
        for rid, (params, done) in list(self.requests.items()):
            done += 1
            finished = done >= (params.max_tokens or 1)
            self.requests[rid] = (params, done)
            if finished:
                del self.requests[rid]
            comp = CompletionOutput(
                0, f"t{done - 1}", [done], None, None, "length" if finished else None
            )
            outputs.append(RequestOutput(rid, None, [1], None, [comp], finished))
        self.stats.generation_tokens += len(outputs)
        return outputs

    def get_stats(self) -> SchedulerStats:
        self.stats.num_running_reqs = len(self.requests)
        return self.stats

    def get_num_free_blocks(self) -> int:
        return 100 - len(self.requests)


def delta(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA)


async def collect(engine: AsyncLLM, request_id: str, max_tokens: int, prompt: str = "p") -> str:
    return "".join(
        [o.outputs[0].text async for o in engine.generate(prompt, delta(max_tokens), request_id)]
    )


@pytest.fixture()
def scripted() -> Any:
    fake = ScriptedEngine()
    engine = AsyncLLM(fake, log_stats=False)  # type: ignore[arg-type]
    yield fake, engine
    engine.shutdown()


def test_streams_deltas_of_concurrent_requests(scripted: Any) -> None:
    fake, engine = scripted

    async def main() -> list[str]:
        return await asyncio.gather(*(collect(engine, f"r{i}", 3 + i) for i in range(4)))

    assert asyncio.run(main()) == ["t0t1t2", "t0t1t2t3", "t0t1t2t3t4", "t0t1t2t3t4t5"]
    assert fake.step_thread is not threading.current_thread()  # the engine runs on its own thread
    assert fake.aborted == []


def test_consumer_leaving_early_aborts(scripted: Any) -> None:
    fake, engine = scripted

    async def main() -> None:
        async for _ in engine.generate("p", delta(1000), "early"):
            break
        cancelled = asyncio.ensure_future(collect(engine, "cancelled", 1000))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        for _ in range(100):
            if not fake.requests:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert sorted(fake.aborted) == ["cancelled", "early"]
    assert fake.requests == {}


def test_bad_request_raises_value_error_and_engine_goes_on(scripted: Any) -> None:
    fake, engine = scripted

    async def main() -> str:
        with pytest.raises(ValueError, match="empty"):
            await collect(engine, "bad", 3, prompt="")
        return await collect(engine, "good", 2)

    assert asyncio.run(main()) == "t0t1"


def test_failed_step_fails_its_requests_then_recovers(scripted: Any) -> None:
    fake, engine = scripted

    async def main() -> str:
        fake.fail_next_step = True
        with pytest.raises(EngineGenerateError, match="exploded"):
            await collect(engine, "victim", 5)
        return await collect(engine, "next", 2)

    assert asyncio.run(main()) == "t0t1"
    assert "victim" in fake.aborted and not engine.errored


def test_broken_engine_is_dead(scripted: Any) -> None:
    fake, engine = scripted

    async def main() -> None:
        fake.fail_next_step = fake.fail_abort = True
        with pytest.raises(EngineGenerateError):
            await collect(engine, "victim", 5)
        with pytest.raises(EngineDeadError):
            await engine.check_health()
        with pytest.raises(EngineDeadError):
            await collect(engine, "after", 2)

    asyncio.run(main())
    assert engine.errored


def test_logging_stat_logger_line(caplog: pytest.LogCaptureFixture) -> None:
    stat_logger = LoggingStatLogger()
    stats = SchedulerStats(num_running_reqs=2, num_waiting_reqs=1, kv_cache_usage=0.25)
    stats.prompt_tokens, stats.generation_tokens = 100, 40
    stats.prefix_cache_queries, stats.prefix_cache_hits = 10, 5
    stat_logger.record(stats, [])
    with caplog.at_level(logging.INFO, logger="pagedllm.engine"):
        stat_logger.log()
    line = caplog.records[-1].getMessage()
    assert "Avg prompt throughput:" in line and "Avg generation throughput:" in line
    assert "Running: 2 reqs, Waiting: 1 reqs, GPU KV cache usage: 25.0%" in line
    assert "Prefix cache hit rate: 50.0%" in line
