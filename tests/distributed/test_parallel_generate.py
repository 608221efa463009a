"""Tensor and pipeline parallelism through the public API (mp executor, gloo, CPU):
every layout must give the tokens of the single-process engine, exactly."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import PARAMS, PROMPTS, generate_tokens, make_llm, pid_alive

from pagedllm.executor.multiproc import MultiprocExecutor
from pagedllm.worker.kv_cache import KVCacheSpec

_REFERENCE: dict[str, list[list[int]]] = {}


def reference_tokens(path: str) -> list[list[int]]:
    if path not in _REFERENCE:
        _REFERENCE[path] = generate_tokens(make_llm(path))
    return _REFERENCE[path]


def check_layout(path: str, **parallel: Any) -> tuple[list[KVCacheSpec], list[int]]:
    """Generate with `parallel` and compare with world size 1; shut down. Returns each
    rank's KV cache spec and the worker pids."""
    expected = reference_tokens(path)
    llm = make_llm(path, **parallel)
    try:
        executor = llm.llm_engine.executor
        assert isinstance(executor, MultiprocExecutor)
        assert generate_tokens(llm) == expected
        llm.llm_engine.check_integrity()
        return executor.collective_rpc("get_kv_cache_spec"), executor.worker_pids
    finally:
        llm.llm_engine.shutdown()


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_tensor_parallel_2(model: str, tiny_llama_dir: str, tiny_gpt2_dir: str) -> None:
    path = tiny_llama_dir if model == "llama" else tiny_gpt2_dir
    specs, _ = check_layout(path, tensor_parallel_size=2)
    # Every rank caches every layer, for its half of the kv heads (llama 2 -> 1, gpt2 4 -> 2).
    num_layers, kv_heads = (2, 1) if model == "llama" else (3, 2)
    assert [(s.num_layers, s.num_kv_heads) for s in specs] == [(num_layers, kv_heads)] * 2


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_pipeline_parallel_2(model: str, tiny_llama_dir: str, tiny_gpt2_dir: str) -> None:
    path = tiny_llama_dir if model == "llama" else tiny_gpt2_dir
    specs, pids = check_layout(path, pipeline_parallel_size=2)
    # Each stage caches its own layers only (gpt2's 3 layers split 2 + 1), all kv heads.
    layers = [1, 1] if model == "llama" else [2, 1]
    assert [s.num_layers for s in specs] == layers
    assert [s.num_kv_heads for s in specs] == ([2, 2] if model == "llama" else [4, 4])
    assert not any(pid_alive(pid) for pid in pids), "shutdown() left worker processes"


@pytest.mark.slow
def test_tensor_parallel_beyond_kv_heads(tiny_llama_dir: str) -> None:
    """tp 4 > 2 kv heads: each kv head is replicated on two ranks (4 processes: slow
    on a 2-core machine; the layer-level case is in tests/models/test_tensor_parallel.py)."""
    specs, _ = check_layout(tiny_llama_dir, tensor_parallel_size=4)
    assert [s.num_kv_heads for s in specs] == [1] * 4


@pytest.mark.slow
def test_tensor_and_pipeline_parallel(tiny_llama_dir: str) -> None:
    """World size 4 (tp 2 x pp 2): slow on a 2-core machine."""
    check_layout(tiny_llama_dir, tensor_parallel_size=2, pipeline_parallel_size=2)


def run_with_aborts(path: str, **parallel: Any) -> tuple[dict[str, list[int]], int]:
    """Eight requests in a 10-block KV pool (preempted and recomputed), stepped
    synchronously; three aborted at fixed steps (one running since its resumption
    after a preemption) and a finished request's id reused by a new request. Returns the finished requests' tokens and the number
    of preemptions."""
    llm = make_llm(
        path, num_gpu_blocks_override=10, max_model_len=40, async_scheduling=False, **parallel
    )
    try:
        engine = llm.llm_engine
        for i in range(8):
            engine.add_request(str(i), PROMPTS[i % 4], PARAMS[i % 4])
        finished: dict[str, list[int]] = {}
        aborts = {3: "2", 10: "4", 13: "5"}
        step = 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = list(out.outputs[0].token_ids)
            step += 1
            if step in aborts:
                engine.abort_request(aborts[step])
            if step == 12:  # "3" has finished: its id comes back as another request
                engine.add_request("3", PROMPTS[1], PARAMS[2])
        engine.check_integrity()
        assert engine.get_num_free_blocks() == engine.kv_cache_manager.num_blocks
        return finished, engine.get_stats().num_preemptions
    finally:
        llm.llm_engine.shutdown()


def test_tensor_parallel_2_preemption_and_aborts(tiny_llama_dir: str) -> None:
    """The workers' request states (worker/request_state.py) follow preemption,
    resumption with a new block table, aborts and a reused id: tokens of one process
    (tests/worker/test_request_state.py checks the rows themselves)."""
    expected, preemptions = run_with_aborts(tiny_llama_dir)
    assert preemptions > 0 and not {"2", "4", "5"} & set(expected) and "3" in expected
    assert run_with_aborts(tiny_llama_dir, tensor_parallel_size=2) == (expected, preemptions)
