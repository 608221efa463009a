"""Shared fixtures: a tiny random Llama saved with save_pretrained (fast engine
tests) and the real embedded SmolLM2 model (loaded once per session); how
pytest-xdist (`-n auto` in pyproject's addopts) shares the tests between workers."""

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
_SHARED_SCOPES = {"test_ray_async.py": "ray", "test_ray_executor.py": "ray"}
# The entrypoint tests run as one unit: their shared servers (session-scoped, started
# once) stop when the run leaves the folder (tests/entrypoints/conftest.py).
_ENTRYPOINTS = "tests/entrypoints/"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): two workers for the CPU suite; none (no xdist)
    for `-m gpu` runs, which share one accelerator and time their steps.
    PYTEST_XDIST_AUTO_NUM_WORKERS overrides, as in xdist."""
    if "PYTEST_XDIST_AUTO_NUM_WORKERS" in os.environ:
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    markexpr = str(config.getoption("markexpr", ""))
    if "gpu" in markexpr.replace("not gpu", ""):
        return 0
    cpus = len(os.sched_getaffinity(0))
    return 2 if cpus >= 2 else 0


def _xdist_scope(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    if path.startswith(_ENTRYPOINTS):
        return _ENTRYPOINTS
    return _SHARED_SCOPES.get(Path(path).name, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, with tests/entrypoints and the Ray files each one unit: a
    unit's tests run on one worker, in order, so module- and session-scoped fixtures
    start once; xdist hands out the units with the most tests first (tests/entrypoints).
    (xdist's own `loadgroup` marks do not reach pytest 9's node ids.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _xdist_scope(nodeid)

    return UnitScheduling(config, log)


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
