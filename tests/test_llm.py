"""The offline LLM API end to end: batch invariance, preemption, prefix caching,
n samples, stop conditions, logprobs, streaming, errors, priorities under preemption."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pagedllm import LLM, SamplingParams


def tiny_llm(path: str, **kwargs: Any) -> LLM:
    base: dict[str, Any] = dict(
        device="cpu", dtype="float32", skip_tokenizer_init=True, block_size=4
    )
    base.update(kwargs)
    return LLM(model=path, **base)


def mixed_requests(
    n: int, seed: int = 0
) -> tuple[list[dict[str, list[int]]], list[SamplingParams]]:
    rng = random.Random(seed)
    prompts, params = [], []
    for i in range(n):
        prompts.append(
            {"prompt_token_ids": [rng.randrange(1, 500) for _ in range(rng.randint(1, 40))]}
        )
        kind = i % 4
        if kind == 0:
            sp = SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 24), ignore_eos=True)
        elif kind == 1:
            sp = SamplingParams(
                temperature=0.8, seed=i, max_tokens=rng.randint(1, 24), ignore_eos=True
            )
        elif kind == 2:
            sp = SamplingParams(
                temperature=1.0, top_k=20, top_p=0.9, seed=1000 + i, max_tokens=16, ignore_eos=True
            )
        else:
            sp = SamplingParams(
                temperature=0.0, repetition_penalty=1.3, max_tokens=12, ignore_eos=True
            )
        params.append(sp)
    return prompts, params


def token_ids(outputs: list[Any]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_batch_invariance_greedy_and_seeded(tiny_llama_dir: str) -> None:
    llm = tiny_llm(tiny_llama_dir, max_num_batched_tokens=64)
    prompts, params = mixed_requests(64)
    together = token_ids(llm.generate(prompts, params, use_tqdm=False))
    alone = [token_ids(llm.generate([p], sp, use_tqdm=False))[0] for p, sp in zip(prompts, params)]
    assert together == alone
    assert [len(t) for t in together] == [sp.max_tokens for sp in params]
    llm.llm_engine.check_integrity()
    assert llm.llm_engine.get_num_free_blocks() == llm.llm_engine.kv_cache_manager.num_blocks


def test_tiny_cache_preempts_and_gives_same_output(tiny_llama_dir: str) -> None:
    prompts, params = mixed_requests(16, seed=1)
    big = token_ids(tiny_llm(tiny_llama_dir).generate(prompts, params, use_tqdm=False))
    small_llm = tiny_llm(tiny_llama_dir, num_gpu_blocks_override=24, max_model_len=80)
    small = token_ids(small_llm.generate(prompts, params, use_tqdm=False))
    assert small == big
    assert small_llm.llm_engine.get_stats().num_preemptions > 0


def test_max_model_len_larger_than_cache_is_a_clear_error(tiny_llama_dir: str) -> None:
    with pytest.raises(ValueError, match="at most 96"):
        tiny_llm(tiny_llama_dir, num_gpu_blocks_override=24, max_model_len=200)


def test_prefix_caching_reuses_blocks_with_same_output(tiny_llama_dir: str) -> None:
    prefix = list(range(1, 41))
    prompts = [{"prompt_token_ids": prefix + [100 + i, 200 + i]} for i in range(3)]
    sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    cached = tiny_llm(tiny_llama_dir)
    first = cached.generate(prompts[:1], sp, use_tqdm=False)
    rest = cached.generate(prompts[1:], sp, use_tqdm=False)
    assert first[0].num_cached_tokens == 0
    assert all(o.num_cached_tokens == 40 for o in rest)
    uncached = tiny_llm(tiny_llama_dir, enable_prefix_caching=False)
    assert token_ids(first + rest) == token_ids(uncached.generate(prompts, sp, use_tqdm=False))


def test_n_samples_share_prompt_and_seed_reproduces(tiny_llama_dir: str) -> None:
    llm = tiny_llm(tiny_llama_dir)
    sp = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True)
    prompt = {"prompt_token_ids": list(range(1, 30))}
    out = llm.generate(prompt, sp, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    samples = [tuple(c.token_ids) for c in out.outputs]
    assert len(set(samples)) > 1
    again = llm.generate(prompt, sp, use_tqdm=False)[0]
    assert [tuple(c.token_ids) for c in again.outputs] == samples


def test_logprobs_and_prompt_logprobs(tiny_llama_dir: str) -> None:
    import torch

    llm = tiny_llm(tiny_llama_dir)
    sp = SamplingParams(
        temperature=0.0, max_tokens=4, logprobs=3, prompt_logprobs=2, ignore_eos=True
    )
    out = llm.generate({"prompt_token_ids": [5, 6, 7, 8]}, sp, use_tqdm=False)[0]
    completion = out.outputs[0]
    assert completion.logprobs is not None and len(completion.logprobs) == 4
    for token, lp in zip(completion.token_ids, completion.logprobs):
        assert token in lp and lp[token].rank == 1  # greedy picks the most likely token
        assert 3 <= len(lp) <= 4
    total = sum(lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs))
    assert completion.cumulative_logprob == pytest.approx(total, abs=1e-4)
    assert out.prompt_logprobs is not None and out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == 4 and all(6 in out.prompt_logprobs[1] for _ in [0])
    assert all(
        torch.isfinite(torch.tensor(v.logprob)) for d in out.prompt_logprobs[1:] for v in d.values()
    )


def test_abort_frees_blocks(tiny_llama_dir: str) -> None:
    llm = tiny_llm(tiny_llama_dir)
    engine = llm.llm_engine
    free = engine.get_num_free_blocks()
    engine.add_request("x", {"prompt_token_ids": list(range(1, 50))}, SamplingParams(max_tokens=50))
    engine.step()
    assert engine.get_num_free_blocks() < free
    engine.abort_request("x")
    assert engine.get_num_free_blocks() == free and not engine.has_unfinished_requests()
    engine.check_integrity()


def test_invalid_input_errors_name_the_argument(tiny_llama_dir: str) -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    llm = tiny_llm(tiny_llama_dir, max_model_len=64)
    with pytest.raises(ValueError, match="maximum context length is 64 tokens"):
        llm.generate({"prompt_token_ids": [1] * 64}, use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate({"prompt_token_ids": [100000]}, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(
            ["a", "b"] and [{"prompt_token_ids": [1]}] * 2, [SamplingParams()] * 3, use_tqdm=False
        )
    with pytest.raises(TypeError, match="bogus"):
        LLM(model=tiny_llama_dir, bogus=1)
    assert llm.llm_engine.get_num_free_blocks() == llm.llm_engine.kv_cache_manager.num_blocks


def test_async_scheduling_gives_the_same_outputs(tiny_llama_dir: str) -> None:
    prompts, params = mixed_requests(24, seed=3)
    # No penalties: every step is pipelined (penalties make the engine wait each step).
    params = [
        sp if sp.repetition_penalty == 1.0 else SamplingParams(temperature=0.0, max_tokens=9)
        for sp in params
    ]
    for sp in params[:8]:
        sp.stop_token_ids = [t for t in range(0, 512, 7)]  # stops early, found a step late
        sp.all_stop_token_ids = set(sp.stop_token_ids)
    sync = tiny_llm(
        tiny_llama_dir, async_scheduling=False, num_gpu_blocks_override=40, max_model_len=120
    )
    asyn = tiny_llm(
        tiny_llama_dir, async_scheduling=True, num_gpu_blocks_override=40, max_model_len=120
    )
    expected = sync.generate(prompts, params, use_tqdm=False)
    got = asyn.generate(prompts, params, use_tqdm=False)
    assert token_ids(got) == token_ids(expected)
    assert [o.outputs[0].finish_reason for o in got] == [
        o.outputs[0].finish_reason for o in expected
    ]
    assert any(o.outputs[0].finish_reason == "stop" for o in got)
    assert asyn.llm_engine.get_stats().num_preemptions > 0
    assert asyn.llm_engine.get_num_free_blocks() == 40
    asyn.llm_engine.check_integrity()


def test_async_engine_loop_ends_when_work_is_done(tiny_llama_dir: str) -> None:
    """Stepping until has_unfinished_requests() is False terminates (an empty step
    leaves nothing pending) and every request gets its final output."""
    llm = tiny_llm(tiny_llama_dir, async_scheduling=True)
    engine = llm.llm_engine
    for i in range(5):
        engine.add_request(
            str(i), {"prompt_token_ids": [i + 1] * 7}, SamplingParams(max_tokens=3 + i)
        )
    finished, steps = {}, 0
    while engine.has_unfinished_requests():
        steps += 1
        assert steps < 100, "the engine never became idle"
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = len(out.outputs[0].token_ids)
    assert finished == {str(i): 3 + i for i in range(5)}
    assert not engine.has_unfinished_requests() and engine.step() == []


def test_n_samples_share_prompt_blocks_copy_free(tiny_llama_dir: str) -> None:
    llm = tiny_llm(tiny_llama_dir)
    engine = llm.llm_engine
    prompt = {"prompt_token_ids": list(range(1, 42))}  # 41 tokens: 10 full blocks of 4
    engine.add_request("p", prompt, SamplingParams(n=4, temperature=1.0, seed=1, max_tokens=5))
    engine.step()  # every child is scheduled in the first step
    kv = engine.kv_cache_manager
    tables = [kv.get_block_ids(f"{i}_p") for i in range(4)]
    shared = tables[0][:10]
    assert all(t[:10] == shared for t in tables)  # the same physical prompt blocks
    assert all(kv.block_pool.blocks[b].ref_cnt == 4 for b in shared)
    assert len({t[10] for t in tables}) == 4  # each sample's own tail block
    while engine.has_unfinished_requests():
        engine.step()
    engine.check_integrity()


def test_generate_freezes_the_heap_for_the_call_only(
    tiny_llama_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Collections during generate skip the objects from before it (the model, torch),
    and after it (also after a failed call) nothing stays frozen in the user's process."""
    import gc

    llm = tiny_llm(tiny_llama_dir)
    prompts, params = mixed_requests(8)
    seen: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(gc.get_freeze_count())

    old = gc.get_threshold()
    monkeypatch.setenv("PAGEDLLM_GC_THRESHOLD", "50,10,10")  # collections every few allocations
    gc.callbacks.append(record)
    try:
        llm.generate(prompts, params, use_tqdm=False)
        frozen = [n for n in seen if n > 10_000]  # the model and torch, frozen in the call
        assert len(frozen) > len(seen) // 2, seen
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == old
        with pytest.raises(ValueError):
            llm.generate([{"prompt_token_ids": [1, 2]}], SamplingParams(max_tokens=-1))
        assert gc.get_freeze_count() == 0
    finally:
        gc.callbacks.remove(record)


def test_priorities_under_preemption_and_async_scheduling_keep_the_tokens(
    tiny_llama_dir: str,
) -> None:
    """A cache too small for the batch: requests are preempted by priority and resumed,
    with async scheduling's placeholders in flight; every request's tokens are those
    of an FCFS run with room to spare, and every block comes back."""
    prompts, params = mixed_requests(16, seed=5)
    roomy = tiny_llm(tiny_llama_dir).generate(prompts, params, use_tqdm=False)
    small = tiny_llm(
        tiny_llama_dir,
        scheduling_policy="priority",
        async_scheduling=True,
        num_gpu_blocks_override=24,
        max_model_len=80,
    )
    priorities = [(i * 7) % 5 - 2 for i in range(len(prompts))]
    got = small.generate(prompts, params, use_tqdm=False, priority=priorities)
    assert token_ids(got) == token_ids(roomy)
    assert small.llm_engine.get_stats().num_preemptions > 0
    assert small.llm_engine.get_num_free_blocks() == 24
    small.llm_engine.check_integrity()


def test_truncate_prompt_tokens_keeps_the_prompts_last_tokens(tiny_llama_dir: str) -> None:
    llm = tiny_llm(tiny_llama_dir)
    ids = list(range(3, 23))
    greedy = dict(temperature=0.0, max_tokens=5, ignore_eos=True)
    cut = llm.generate(
        {"prompt_token_ids": ids}, SamplingParams(truncate_prompt_tokens=6, **greedy), False
    )[0]
    tail = llm.generate({"prompt_token_ids": ids[-6:]}, SamplingParams(**greedy), False)[0]
    assert cut.prompt_token_ids == ids[-6:]
    assert cut.outputs[0].token_ids == tail.outputs[0].token_ids
    whole = llm.generate(
        {"prompt_token_ids": ids}, SamplingParams(truncate_prompt_tokens=-1, **greedy), False
    )[0]
    assert whole.prompt_token_ids == ids  # -1: up to max_model_len
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        SamplingParams(truncate_prompt_tokens=0)
