"""scheduling_policy="priority" end to end: LLM.generate(priority=...) runs the
lowest value first, the tokens do not change, and a priority without the policy (or
of the wrong type) is a ValueError naming it, as in vLLM."""

from __future__ import annotations

from typing import Any

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs


def one_at_a_time(path: str, **kwargs: Any) -> LLM:
    return LLM(
        model=path,
        device="cpu",
        dtype="float32",
        skip_tokenizer_init=True,
        block_size=4,
        max_num_seqs=1,  # one request runs at a time: the finish order is the schedule
        **kwargs,
    )


PROMPTS = [{"prompt_token_ids": [5 + i, 17, 33, 2 * i + 1]} for i in range(4)]
GREEDY = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)


def finish_order(outputs: list[Any]) -> list[int]:
    times = [o.metrics.finished_time for o in outputs]
    return sorted(range(len(outputs)), key=lambda i: times[i])


def test_priority_policy_runs_the_lowest_value_first(tiny_llama_dir: str) -> None:
    llm = one_at_a_time(tiny_llama_dir, scheduling_policy="priority")
    plain = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert finish_order(plain) == [0, 1, 2, 3]  # all priorities 0: arrival order
    ranked = llm.generate(PROMPTS, GREEDY, use_tqdm=False, priority=[3, -1, 2, 0])
    assert finish_order(ranked) == [1, 3, 2, 0]
    assert [o.outputs[0].token_ids for o in ranked] == [o.outputs[0].token_ids for o in plain]


def test_priority_needs_the_priority_policy(tiny_llama_dir: str) -> None:
    llm = one_at_a_time(tiny_llama_dir)
    with pytest.raises(ValueError, match="priority scheduling is not enabled"):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False, priority=[1])
    zero = llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False, priority=[0])  # the default
    assert len(zero[0].outputs[0].token_ids) == 3
    assert llm.llm_engine.get_num_unfinished_requests() == 0


def test_priority_arguments_are_checked(tiny_llama_dir: str) -> None:
    llm = one_at_a_time(tiny_llama_dir, scheduling_policy="priority")
    with pytest.raises(ValueError, match="priority has 1 entries but there are 2 prompts"):
        llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False, priority=[1])
    with pytest.raises(ValueError, match="priority must be a 64-bit integer"):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False, priority=[1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="priority must be a 64-bit integer"):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False, priority=[2**63])
    assert llm.llm_engine.get_num_unfinished_requests() == 0
    with pytest.raises(ValueError, match="scheduling_policy must be one of"):
        EngineArgs(model=tiny_llama_dir, scheduling_policy="lifo").create_engine_config()
