"""The CPU KV tier end to end on the CPU device (enabled by its test hook): the same
tokens with swap as with recompute, and prefix-cache hits served from the tier;
the worker's copies block by block."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.worker.kv_cache import CPU_TIER_TEST_HOOK, KVCacheSpec
from pagedllm.worker.kv_swap import KVSwapper

# The tiny Llama (2 layers, 2 kv heads of 16, float32, blocks of 4): 2 KiB a block.
BLOCKS_64 = 64 * 2048 / (1 << 30)  # swap_space in GiB for 64 CPU blocks


def tiny_llm(path: str, **kwargs: Any) -> LLM:
    base: dict[str, Any] = dict(
        device="cpu", dtype="float32", skip_tokenizer_init=True, block_size=4
    )
    base.update(kwargs)
    return LLM(model=path, **base)


def requests(n: int) -> tuple[list[dict[str, list[int]]], list[SamplingParams]]:
    prompts = [
        {"prompt_token_ids": [(7 * i + j) % 500 + 1 for j in range(20 + i)]} for i in range(n)
    ]
    params = [
        SamplingParams(temperature=0.0 if i % 2 else 0.8, seed=i, max_tokens=20, ignore_eos=True)
        for i in range(n)
    ]
    return prompts, params


def token_ids(outputs: list[Any]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_swap_gives_the_same_tokens_as_recompute(
    tiny_llama_dir: str, async_scheduling: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CPU_TIER_TEST_HOOK, "1")
    prompts, params = requests(12)
    expected = token_ids(tiny_llm(tiny_llama_dir).generate(prompts, params, use_tqdm=False))
    small = dict(num_gpu_blocks_override=24, max_model_len=80, async_scheduling=async_scheduling)
    # No prefix cache: every copy out is a swap (no spills), so as many come back.
    small["enable_prefix_caching"] = False
    llm = tiny_llm(tiny_llama_dir, swap_space=BLOCKS_64, preemption_mode="swap", **small)
    assert token_ids(llm.generate(prompts, params, use_tqdm=False)) == expected
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions > 0
    assert stats.kv_swapped_in_blocks == stats.kv_swapped_out_blocks > 0
    llm.llm_engine.check_integrity()
    tier = llm.llm_engine.kv_cache_manager.cpu_tier
    assert tier is not None and tier.pool.get_num_free_blocks() == 64


def test_prefix_hits_come_back_from_the_cpu_tier(
    tiny_llama_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CPU_TIER_TEST_HOOK, "1")
    prefixes = [[(31 * p + j) % 500 + 1 for j in range(32)] for p in range(3)]
    prompts = [{"prompt_token_ids": prefixes[i % 3] + [i + 1, i + 2]} for i in range(9)]
    sp = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    plain = tiny_llm(tiny_llama_dir, enable_prefix_caching=False)
    expected = [token_ids(plain.generate([p], sp, use_tqdm=False))[0] for p in prompts]
    # 24 GPU blocks hold one prefix (8 blocks) and a bit: the others spill to the CPU.
    llm = tiny_llm(
        tiny_llama_dir, swap_space=BLOCKS_64, num_gpu_blocks_override=12, max_model_len=48
    )
    got = [token_ids(llm.generate([p], sp, use_tqdm=False))[0] for p in prompts]
    assert got == expected
    stats = llm.llm_engine.get_stats()
    # Prompts 3..5 find their prefix evicted unspilled (it had shown no reuse yet) and
    # recompute it; it spills on its next eviction, and prompts 6..8 find it on the CPU.
    assert stats.cpu_prefix_cache_hits >= 3 * 32
    llm.llm_engine.check_integrity()


def test_cpu_device_logs_that_the_flags_are_ignored(
    tiny_llama_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pagedllm.core.engine_core"):
        llm = tiny_llm(tiny_llama_dir, swap_space=2, cpu_offload_gb=1)
    assert "do not apply on the CPU device" in caplog.text
    assert llm.llm_engine.kv_cache_manager.cpu_tier is None


def test_swapper_copies_blocks_out_and_back() -> None:
    spec = KVCacheSpec(num_layers=3, block_size=2, num_kv_heads=2, head_dim=4, dtype=torch.float32)
    caches = [torch.randn(2, 8, 2, 2, 4) for _ in range(3)]
    original = [c.clone() for c in caches]
    swapper = KVSwapper(spec, 6, caches)
    swapper.swap([(1, 4), (2, 5), (6, 0)], [])
    for layer in range(3):
        for gpu, cpu in ((1, 4), (2, 5), (6, 0)):
            assert torch.equal(swapper.cpu_cache[cpu, layer], original[layer][:, gpu])
    for c in caches:
        c.zero_()
    swapper.swap([], [(4, 7), (5, 3), (0, 1)])
    for layer in range(3):
        assert torch.equal(caches[layer][:, 7], original[layer][:, 1])
        assert torch.equal(caches[layer][:, 3], original[layer][:, 2])
        assert torch.equal(caches[layer][:, 1], original[layer][:, 6])
        assert not caches[layer][:, 0].any()  # untouched blocks stay as they were
