"""Shared fixtures: a tiny random Llama saved with save_pretrained (fast engine
tests) and the real embedded SmolLM2 model (loaded once per session); the grouping
of tests for pytest-xdist (`-n 2` in pyproject's addopts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER" in os.environ:
    # One core a worker: two workers with torch's default of a thread a core (and the
    # servers and engine cores they start, which inherit OMP_NUM_THREADS) would run
    # four spinning OpenMP threads on two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# Test files whose processes see each other: the Ray tests would share (or race to
# start) one local Ray cluster.
_SHARED_GROUPS = {"test_ray_async.py": "ray", "test_ray_executor.py": "ray"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): two workers for the CPU suite (most of its time
    is one core's Python or a wait on a server's start-up); none (no xdist) for `-m gpu`
    runs, which share one accelerator and time their steps. PYTEST_XDIST_AUTO_NUM_WORKERS
    overrides, as in xdist."""
    if "PYTEST_XDIST_AUTO_NUM_WORKERS" in os.environ:
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    markexpr = str(config.getoption("markexpr", ""))
    if "gpu" in markexpr.replace("not gpu", ""):
        return 0
    cpus = len(os.sched_getaffinity(0))
    return 2 if cpus >= 2 else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (`--dist loadgroup`) a file's tests run on one worker, so that
    module-scoped fixtures (servers, checkpoints) start once; the tests of the shared
    entrypoint servers (tests/entrypoints/conftest.py, session-scoped) share one group,
    so that their four servers start once, not once a worker. That group, the longest,
    goes first (a long group handed out last would leave the other worker idle)."""
    if config.getoption("dist", "no") == "no":
        return
    first = []
    for item in items:
        path = Path(str(item.path))
        group = _SHARED_GROUPS.get(path.name, str(path))
        if "servers" in getattr(item, "fixturenames", ()):
            group = "entrypoint-servers"
            first.append(item)
        item.add_marker(pytest.mark.xdist_group(group))
    firsts = set(first)
    items[:] = first + [item for item in items if item not in firsts]


def save_tiny_llama(path: Path, vocab_size: int = 512, seed: int = 0) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def smol_llm() -> Iterator[Any]:
    from pagedllm import LLM

    llm = LLM(max_model_len=2048, kv_cache_memory_bytes=256 << 20, max_num_seqs=64)
    yield llm
