"""Async scheduling with the Ray executor (tp=2, gloo, CPU): steps are futures of the
actors' ObjectRefs, sent before the step before them is read, and the tokens are
those of one process stepping synchronously: early stops, preemption and an abort
with a step in flight included; pp=2 keeps a batch per stage in flight. A killed
actor is a clear error, not a hang.

One Ray session for the module (Ray's start is the slow part); the executors join it,
so they leave it running and only kill their actors."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from conftest import make_llm, pid_alive, spy_in_flight
from test_async_multiproc import PROMPTS, sampling_params

from pagedllm import LLM
from pagedllm.executor.base import ExecutorDeadError

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'pagedllm[ray]')")

from pagedllm.executor.ray_executor import RayExecutor  # noqa: E402

Result = tuple[list[list[int]], list[str | None]]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    # Logical CPUs: room for two executors' bundles at once on this 2-core machine.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def expected(tiny_llama_dir: str) -> Result:
    llm = make_llm(tiny_llama_dir, async_scheduling=False)
    try:
        outputs = llm.generate(PROMPTS, sampling_params(), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    reasons = [o.outputs[0].finish_reason for o in outputs]
    assert "stop" in reasons  # the early stops (found one step late) are exercised
    return [list(o.outputs[0].token_ids) for o in outputs], reasons


@pytest.fixture(scope="module")
def ray_llm(ray_session: None, tiny_llama_dir: str) -> Iterator[LLM]:
    """tp=2 on Ray with async scheduling and a pool too small for the workload: 10
    blocks of 4 tokens for ~75 tokens (requests are preempted and recomputed)."""
    llm = make_llm(
        tiny_llama_dir,
        tensor_parallel_size=2,
        distributed_executor_backend="ray",
        async_scheduling=True,
        num_gpu_blocks_override=10,
        max_model_len=40,
    )
    yield llm
    llm.llm_engine.shutdown()


def check_pool_is_whole(llm: LLM) -> None:
    engine = llm.llm_engine
    engine.check_integrity()
    assert engine.get_num_free_blocks() == engine.kv_cache_manager.num_blocks


def test_tp2_async_with_preemption_matches_one_process(ray_llm: LLM, expected: Result) -> None:
    engine = ray_llm.llm_engine
    assert isinstance(engine.executor, RayExecutor)
    assert engine.engine_core.async_scheduling
    unread = spy_in_flight(ray_llm)
    outputs = ray_llm.generate(PROMPTS, sampling_params(), use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    assert (tokens, [o.outputs[0].finish_reason for o in outputs]) == expected
    assert engine.get_stats().num_preemptions > 0
    assert max(unread) == 1  # step N+1 went out while step N was unread, never N+2
    check_pool_is_whole(ray_llm)


def test_abort_with_a_step_in_flight(ray_llm: LLM, expected: Result) -> None:
    engine = ray_llm.llm_engine
    core = engine.engine_core
    for i, (prompt, sp) in enumerate(zip(PROMPTS, sampling_params())):
        engine.add_request(f"a{i}", prompt, sp)
    aborted: str | None = None
    finished: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = list(out.outputs[0].token_ids)
        pending = core._pending
        if aborted is None and pending is not None and pending[0].scheduled:
            aborted = pending[0].scheduled[0].req_id  # its next token is a placeholder
            engine.abort_request(aborted)
    assert aborted is not None and aborted not in finished
    assert set(finished) == {f"a{i}" for i in range(len(PROMPTS))} - {aborted}
    for req_id, tokens in finished.items():
        assert tokens == expected[0][int(req_id[1:])]
    check_pool_is_whole(ray_llm)


def test_pp2_batch_per_stage_in_flight_matches_one_process(
    ray_session: None, tiny_llama_dir: str, expected: Result
) -> None:
    """With pipeline stages the futures give the batch queue instead: stage 0 runs
    batch k+1 while stage 1 runs batch k."""
    llm = make_llm(
        tiny_llama_dir,
        pipeline_parallel_size=2,
        distributed_executor_backend="ray",
        async_scheduling=True,
    )
    try:
        core = llm.llm_engine.engine_core
        assert core.max_batches == 2 and not core.async_scheduling
        unread = spy_in_flight(llm)
        outputs = llm.generate(PROMPTS, sampling_params(), use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outputs]
        assert (tokens, [o.outputs[0].finish_reason for o in outputs]) == expected
        assert max(unread) == 1
        check_pool_is_whole(llm)
    finally:
        llm.llm_engine.shutdown()


def test_killed_actor_under_async_scheduling_is_a_clear_error(ray_llm: LLM) -> None:
    """Last: it kills the module's LLM."""
    engine = ray_llm.llm_engine
    executor = engine.executor
    assert isinstance(executor, RayExecutor)
    pids = executor.worker_pids
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(ExecutorDeadError, match="rank 1"):
        ray_llm.generate(PROMPTS, sampling_params(), use_tqdm=False)
    assert time.monotonic() - start < 30
    # Dead for good, and says so at once; no request is left behind.
    with pytest.raises(ExecutorDeadError, match="rank 1"):
        ray_llm.generate(PROMPTS[:1], sampling_params()[0], use_tqdm=False)
    assert not engine.has_unfinished_requests()
    engine.check_integrity()
    deadline = time.monotonic() + 10
    while pid_alive(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pids[0]), "the surviving actor was not killed"
    assert ray.is_initialized(), "the executor joined this Ray session: not its to stop"
