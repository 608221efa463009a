"""One engine core process, two front ends (what `--api-server-count 2` runs): each
AsyncLLM gets exactly its own requests' tokens (the same greedy tokens as a core of
its own), utility calls come back to their caller, an abort from one front end frees
the request in the shared core, and the core stops when its starter closes it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
import threading
from collections.abc import Iterator

import pytest

from pagedllm.config import EngineArgs, EngineConfig
from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.engine.core_launch import CoreProcess, start_core_process
from pagedllm.engine.core_process import MPClient
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

PROMPTS = [[1, 5, 9, 13], [7, 7, 7], [100, 3, 42, 8, 9, 10], [4, 4, 2]]
GREEDY = SamplingParams(max_tokens=10, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)


def _attach(config: EngineConfig, core: CoreProcess, index: int) -> AsyncLLM:
    """Front end `index` in this process (the servers are processes of their own: here
    each client gets its own copy of the status pipe, as a child inherits one)."""
    endpoints = dataclasses.replace(core.endpoints(index), status_fd=os.dup(core.status_fd))
    return AsyncLLM(config, None, MPClient(config, endpoints), log_stats=False)


def _config(model: str) -> EngineConfig:
    args = EngineArgs(
        model=model, skip_tokenizer_init=True, max_model_len=256, kv_cache_memory_bytes=8 << 20
    )
    return args.create_engine_config()


@pytest.fixture(scope="module")
def shared(tiny_llama_dir: str) -> Iterator[tuple[CoreProcess, list[AsyncLLM]]]:
    config = _config(tiny_llama_dir)
    core = start_core_process(config, tempfile.mkdtemp(prefix="pagedllm-test-"), 2)
    engines = [_attach(config, core, i) for i in range(2)]
    yield core, engines
    for engine in engines:
        engine.shutdown()
    core.stop(grace_s=0.0)


async def _greedy(engine: AsyncLLM, prompt: list[int], request_id: str) -> list[int]:
    final = None
    async for output in engine.generate({"prompt_token_ids": prompt}, GREEDY, request_id):
        final = output
    assert final is not None and final.finished
    return list(final.outputs[0].token_ids)


def _reference(model: str) -> list[list[int]]:
    engine = LLMEngine(_config(model), True, multiprocess=False)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, GREEDY)
    results: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                results[out.request_id] = list(out.outputs[0].token_ids)
    engine.shutdown()
    return [results[str(i)] for i in range(len(PROMPTS))]


def test_each_front_end_gets_its_own_tokens(
    shared: tuple[CoreProcess, list[AsyncLLM]], tiny_llama_dir: str
) -> None:
    _, engines = shared

    async def main() -> list[list[list[int]]]:
        # The same request ids on both front ends would collide in the core: each
        # server's ids are random UUIDs; here they are told apart by hand.
        runs = [
            asyncio.gather(*(_greedy(e, p, f"e{k}-{i}") for i, p in enumerate(PROMPTS)))
            for k, e in enumerate(engines)
        ]
        return list(await asyncio.gather(*runs))

    first, second = asyncio.run(main())
    assert first == second == _reference(tiny_llama_dir)


def test_utility_calls_come_back_to_their_caller(
    shared: tuple[CoreProcess, list[AsyncLLM]],
) -> None:
    _, engines = shared
    results: dict[int, list[object]] = {0: [], 1: []}

    def call(index: int) -> None:
        for _ in range(20):
            results[index].append(engines[index].call_utility("get_num_free_blocks"))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    total = engines[0].core_client.num_gpu_blocks
    assert results[0] == results[1] == [total] * 20


def test_an_abort_from_one_front_end_frees_the_request_in_the_core(
    shared: tuple[CoreProcess, list[AsyncLLM]],
) -> None:
    _, engines = shared
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def main() -> None:
        stream = engines[1].generate({"prompt_token_ids": PROMPTS[0]}, long, "long-1")
        async for output in stream:
            if len(output.outputs[0].token_ids) >= 2:
                break  # leaving the loop aborts the request
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
    for _ in range(100):
        if engines[0].call_utility("get_num_unfinished_requests") == 0:
            break
        threading.Event().wait(0.05)
    assert engines[0].call_utility("get_num_unfinished_requests") == 0
    assert engines[0].call_utility("get_num_free_blocks") == engines[0].core_client.num_gpu_blocks
    engines[0].call_utility("check_integrity")


def test_the_core_stops_with_its_starter(tiny_llama_dir: str) -> None:
    config = _config(tiny_llama_dir)
    core = start_core_process(config, tempfile.mkdtemp(prefix="pagedllm-test-"), 2)
    engine = _attach(config, core, 1)
    core.stop(grace_s=0.0)  # closes its standard input: it exits at end of file
    assert core.proc.returncode is not None
    for _ in range(100):
        if engine.errored:
            break
        threading.Event().wait(0.05)
    assert engine.errored and "died" in str(engine.dead_error)
    engine.shutdown()
