"""Async scheduling with several workers (mp executor, gloo, CPU): step N+1 is sent
before step N's tokens are read, and the tokens are those of one process stepping
synchronously, early stops and preemption included."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import make_llm, spy_in_flight

from pagedllm import EngineArgs, SamplingParams
from pagedllm.config_builder import _pick_async_scheduling
from pagedllm.executor.multiproc import MultiprocExecutor

PROMPTS = [
    {"prompt_token_ids": [(5 * i + 3 * j) % 500 + 1 for j in range(n)]}
    for i, n in enumerate((3, 11, 1, 23, 7, 2))
]


def sampling_params() -> list[SamplingParams]:
    params = [
        SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (8, 5, 9, 6, 7, 8)
    ]
    params[2] = SamplingParams(temperature=0.9, seed=7, max_tokens=9, ignore_eos=True)
    for sp in params[4:]:  # stops early; with async scheduling found one step late
        sp.stop_token_ids = list(range(0, 512, 5))
        sp.all_stop_token_ids = set(sp.stop_token_ids)
    return params


def run(path: str, **kwargs: Any) -> tuple[list[list[int]], list[str | None]]:
    llm = make_llm(path, **kwargs)
    try:
        outputs = llm.generate(PROMPTS, sampling_params(), use_tqdm=False)
        engine = llm.llm_engine
        if kwargs.get("tensor_parallel_size", 1) > 1:
            assert isinstance(engine.executor, MultiprocExecutor)
            assert engine.engine_core.async_scheduling
        if "num_gpu_blocks_override" in kwargs:
            assert engine.get_stats().num_preemptions > 0
        engine.check_integrity()
        assert engine.get_num_free_blocks() == engine.kv_cache_manager.num_blocks
        return (
            [list(o.outputs[0].token_ids) for o in outputs],
            [o.outputs[0].finish_reason for o in outputs],
        )
    finally:
        llm.llm_engine.shutdown()


@pytest.fixture(scope="module")
def expected(tiny_llama_dir: str) -> tuple[list[list[int]], list[str | None]]:
    tokens, reasons = run(tiny_llama_dir, async_scheduling=False)
    assert "stop" in reasons  # the early stops are exercised
    return tokens, reasons


def test_tp2_async_matches_one_process(tiny_llama_dir: str, expected: Any) -> None:
    assert run(tiny_llama_dir, tensor_parallel_size=2, async_scheduling=True) == expected


def test_tp2_async_with_preemption_matches_one_process(tiny_llama_dir: str, expected: Any) -> None:
    # 10 blocks of 4 tokens for ~75 tokens of work: requests are preempted and recomputed.
    got = run(
        tiny_llama_dir,
        tensor_parallel_size=2,
        async_scheduling=True,
        num_gpu_blocks_override=10,
        max_model_len=40,
    )
    assert got == expected


def test_steps_are_futures_launched_before_they_are_read(tiny_llama_dir: str) -> None:
    llm = make_llm(tiny_llama_dir, tensor_parallel_size=2, async_scheduling=True)
    try:
        unread_at_launch = spy_in_flight(llm)
        llm.generate(PROMPTS[:2], sampling_params()[:2], use_tqdm=False)
        assert max(unread_at_launch) == 1  # step N+1 went out while step N was unread
    finally:
        llm.llm_engine.shutdown()


@pytest.mark.parametrize("backend", ["mp", "ray"])
def test_async_scheduling_with_several_workers(tiny_llama_dir: str, backend: str) -> None:
    """Both executors' steps are futures: async scheduling is taken (with pipeline
    stages it becomes their batch queue: tests/distributed/test_pp_batch_queue.py). By
    default it is on on CUDA only, and with Ray only when asked (not yet run on a GPU)."""
    args = EngineArgs(
        model=tiny_llama_dir,
        device="cpu",
        skip_tokenizer_init=True,
        tensor_parallel_size=2,
        distributed_executor_backend=backend,
    )
    assert not args.create_engine_config().scheduler_config.async_scheduling
    assert _pick_async_scheduling(args, torch.device("cuda")) == (backend == "mp")
    args.async_scheduling = True
    assert args.create_engine_config().scheduler_config.async_scheduling
