"""The Ray executor on a local Ray cluster (started by the executor): the same
tokens as the single-process engine, and a clear error when an actor dies."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import generate_tokens, make_llm

pytest.importorskip("ray", reason="Ray is not installed (pip install 'pagedllm[ray]')")

from pagedllm.executor.base import ExecutorDeadError  # noqa: E402
from pagedllm.executor.ray_executor import RayExecutor  # noqa: E402


def test_ray_tensor_parallel_matches_one_process(tiny_llama_dir: str) -> None:
    """One Ray cluster start (the slow part) covers the tokens and the failure path."""
    import ray

    expected = generate_tokens(make_llm(tiny_llama_dir))
    llm = make_llm(tiny_llama_dir, tensor_parallel_size=2, distributed_executor_backend="ray")
    try:
        executor = llm.llm_engine.executor
        assert isinstance(executor, RayExecutor)
        assert generate_tokens(llm) == expected
        os.kill(executor.worker_pids[1], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(ExecutorDeadError, match="rank 1"):
            generate_tokens(llm)
        assert time.monotonic() - start < 30
    finally:
        llm.llm_engine.shutdown()
    assert not ray.is_initialized(), "the executor started Ray, so it must stop it"
