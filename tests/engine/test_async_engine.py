"""AsyncLLM over a real engine core (a tiny random Llama) on a thread of this process:
streaming, abort on early exit and cancellation, bad requests, a failing step
(recoverable: only its requests fail) and a broken core (dead). The same front end
over the core in its own process is tested in test_core_process.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from pagedllm.config import EngineArgs
from pagedllm.core.engine_core import EngineCore
from pagedllm.engine.async_engine import AsyncLLM, EngineDeadError, EngineGenerateError
from pagedllm.engine.async_stats import LoggingStatLogger
from pagedllm.engine.core_client import ThreadedClient
from pagedllm.outputs import RequestOutput, SchedulerStats
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

PROMPT = {"prompt_token_ids": [1, 5, 9, 13]}


@pytest.fixture(scope="module")
def core(tiny_llama_dir: str) -> EngineCore:
    args = EngineArgs(
        model=tiny_llama_dir,
        skip_tokenizer_init=True,
        max_model_len=256,
        kv_cache_memory_bytes=8 << 20,
    )
    return EngineCore(args.create_engine_config())


@pytest.fixture()
def engine(core: EngineCore) -> Iterator[AsyncLLM]:
    async_llm = AsyncLLM(core.engine_config, None, ThreadedClient(core), log_stats=False)
    yield async_llm
    async_llm.shutdown()
    assert not core.has_unfinished_requests()
    assert core.get_num_free_blocks() == core.num_gpu_blocks
    core.check_integrity()


def delta(max_tokens: int, **kwargs: Any) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens, temperature=0.0, output_kind=RequestOutputKind.DELTA, **kwargs
    )


async def collect(engine: AsyncLLM, request_id: str, params: SamplingParams) -> RequestOutput:
    """All deltas of a request folded into one output (token ids concatenated)."""
    tokens: list[int] = []
    last = None
    async for out in engine.generate(PROMPT, params, request_id):
        tokens += out.outputs[0].token_ids
        last = out
    assert last is not None and last.finished
    last.outputs[0].token_ids = tokens
    return last


def test_streams_deltas_of_concurrent_requests(engine: AsyncLLM, core: EngineCore) -> None:
    async def main() -> list[RequestOutput]:
        return await asyncio.gather(*(collect(engine, f"r{i}", delta(3 + i)) for i in range(4)))

    outputs = asyncio.run(main())
    assert [len(o.outputs[0].token_ids) for o in outputs] == [3, 4, 5, 6]
    assert all(o.outputs[0].finish_reason == "length" for o in outputs)
    # Greedy: the longer ones continue the shorter ones.
    assert outputs[3].outputs[0].token_ids[:3] == outputs[0].outputs[0].token_ids
    assert engine.get_stats().generation_tokens >= 18


def test_consumer_leaving_early_aborts(engine: AsyncLLM, core: EngineCore) -> None:
    async def main() -> None:
        async for _ in engine.generate(PROMPT, delta(200), "early"):
            break
        cancelled = asyncio.ensure_future(collect(engine, "cancelled", delta(200)))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        for _ in range(200):
            if not core.has_unfinished_requests():
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert engine.request_ids == []
    assert core.get_stats().finished_reasons.get("abort", 0) >= 2


def test_bad_request_raises_value_error_and_engine_goes_on(engine: AsyncLLM) -> None:
    async def main() -> RequestOutput:
        with pytest.raises(ValueError, match="empty"):
            async for _ in engine.generate({"prompt_token_ids": []}, delta(3), "bad"):
                pass
        with pytest.raises(ValueError, match="outside the vocabulary"):
            async for _ in engine.generate({"prompt_token_ids": [10**6]}, delta(3), "bad2"):
                pass
        return await collect(engine, "good", delta(2))

    assert len(asyncio.run(main()).outputs[0].token_ids) == 2


def test_failed_step_fails_its_requests_then_recovers(
    engine: AsyncLLM, core: EngineCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = core.executor.execute_model
    calls = {"n": 0}

    def explode_once(scheduler_output: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the model exploded")
        return real(scheduler_output)

    monkeypatch.setattr(core.executor, "execute_model", explode_once)

    async def main() -> RequestOutput:
        with pytest.raises(EngineGenerateError, match="failed while running request victim"):
            await collect(engine, "victim", delta(5))
        return await collect(engine, "next", delta(2))

    after = asyncio.run(main())
    assert after.outputs[0].finish_reason == "length" and not engine.errored


def test_broken_core_is_dead(
    engine: AsyncLLM, core: EngineCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Any:
        raise RuntimeError("the scheduler is broken")

    monkeypatch.setattr(core.scheduler, "schedule", broken)

    async def main() -> None:
        with pytest.raises(EngineDeadError, match="scheduler is broken"):
            await collect(engine, "victim", delta(5))
        with pytest.raises(EngineDeadError):
            await engine.check_health()
        with pytest.raises(EngineDeadError):
            await collect(engine, "after", delta(2))

    asyncio.run(main())
    assert engine.errored
    monkeypatch.undo()
    core.abort_requests(["victim"])  # leave the shared core clean


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
