"""A dead worker fails the engine fast and clearly; impossible splits fail before
any process is spawned; a dropped LLM takes its workers with it."""

from __future__ import annotations

import gc
import os
import signal
import time

import pytest
from conftest import PARAMS, PROMPTS, make_llm, pid_alive

from pagedllm.executor.base import ExecutorDeadError
from pagedllm.executor.multiproc import MultiprocExecutor


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_killed_worker_fails_the_next_generate(tiny_llama_dir: str, async_scheduling: bool) -> None:
    llm = make_llm(tiny_llama_dir, tensor_parallel_size=2, async_scheduling=async_scheduling)
    try:
        engine = llm.llm_engine
        llm.generate(PROMPTS[:1], PARAMS[0], use_tqdm=False)
        pids = engine.executor.worker_pids
        os.kill(pids[1], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(ExecutorDeadError, match=r"rank 1 .*exit code -9"):
            llm.generate(PROMPTS, PARAMS, use_tqdm=False)
        assert time.monotonic() - start < 30
        # Dead for good, and says so at once; no request is left behind.
        with pytest.raises(ExecutorDeadError, match="rank 1"):
            llm.generate(PROMPTS[:1], PARAMS[0], use_tqdm=False)
        with pytest.raises(ExecutorDeadError):
            engine.executor.check_health()
        assert not engine.has_unfinished_requests()
        engine.check_integrity()
        deadline = time.monotonic() + 10
        while pid_alive(pids[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(pids[0]), "the surviving worker was not stopped"
    finally:
        llm.llm_engine.shutdown()


def test_dropping_the_llm_stops_its_workers(tiny_llama_dir: str) -> None:
    llm = make_llm(tiny_llama_dir, pipeline_parallel_size=2)
    pids = llm.llm_engine.executor.worker_pids
    assert all(pid_alive(pid) for pid in pids)
    del llm
    gc.collect()
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(pid) for pid in pids)


@pytest.fixture
def no_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: MultiprocExecutor) -> None:
        raise AssertionError("workers were started before the config was checked")

    monkeypatch.setattr(MultiprocExecutor, "_start_workers", refuse)


@pytest.mark.parametrize(
    ("parallel", "message"),
    [
        (dict(tensor_parallel_size=3), r"num_attention_heads \(4\) must be divisible"),
        (dict(tensor_parallel_size=8), r"num_attention_heads \(4\) must be divisible"),
        (dict(pipeline_parallel_size=3), r"pipeline_parallel_size \(3\) is larger"),
    ],
)
def test_impossible_split_is_a_value_error_before_spawning(
    tiny_llama_dir: str, no_spawn: None, parallel: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_llm(tiny_llama_dir, **parallel)


def test_kv_heads_must_divide_or_be_divided(tmp_path: object, no_spawn: None) -> None:
    from pathlib import Path

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=6,
        num_key_value_heads=3,
        max_position_embeddings=64,
    )
    path = Path(str(tmp_path)) / "kv3"
    LlamaForCausalLM(config).save_pretrained(path)
    with pytest.raises(ValueError, match=r"num_key_value_heads \(3\)"):
        make_llm(str(path), tensor_parallel_size=2)


def test_uni_backend_refuses_several_ranks(tiny_llama_dir: str) -> None:
    with pytest.raises(ValueError, match="runs one worker"):
        make_llm(tiny_llama_dir, tensor_parallel_size=2, distributed_executor_backend="uni")
