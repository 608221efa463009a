"""Shared pieces of the distributed tests: tiny checkpoints of two architectures and
one workload whose tokens every parallel layout must reproduce exactly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pagedllm import LLM, SamplingParams

# Varied lengths (one longer than the token budget: chunked prefill across steps).
PROMPTS: list[dict[str, list[int]]] = [
    {"prompt_token_ids": [(7 * i + 3 * j) % 500 + 1 for j in range(n)]}
    for i, n in enumerate((3, 11, 1, 23))
]
PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
    SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True),
    SamplingParams(temperature=0.9, seed=7, max_tokens=8, ignore_eos=True),
    SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
]


def save_tiny_gpt2(path: Path, seed: int = 0) -> str:
    """3 layers (pp=2 splits them unevenly, 2 + 1) and tied embeddings (the last
    stage holds wte for the LM head)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=512, n_positions=256, n_embd=64, n_layer=3, n_head=4, initializer_range=0.5
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def make_llm(path: str, **kwargs: Any) -> LLM:
    base: dict[str, Any] = dict(
        device="cpu",
        dtype="float32",
        skip_tokenizer_init=True,
        block_size=4,
        max_num_batched_tokens=16,
        max_num_seqs=4,
        max_model_len=64,
    )
    base.update(kwargs)
    return LLM(model=path, **base)


def generate_tokens(llm: LLM) -> list[list[int]]:
    outputs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def spy_in_flight(llm: LLM) -> list[int]:
    """Wraps the executor's `execute_model` (mp and Ray both return step futures): for
    each launched step, how many earlier steps were still unread."""
    executor = llm.llm_engine.executor
    launched: list[Any] = []
    unread_at_launch: list[int] = []
    original = executor.execute_model

    def spy(scheduler_output: Any) -> Any:
        unread_at_launch.append(sum(f.output is None for f in launched))
        future = original(scheduler_output)
        launched.append(future)
        return future

    executor.execute_model = spy  # type: ignore[method-assign]
    return unread_at_launch
