"""Issue 14 offline, with the real embedded SmolLM2: a bad request fails alone (at
admission, before any step), the caps on cost hold, and an output cut inside a
multi-byte character never ends in U+FFFD."""

from __future__ import annotations

from typing import Any

import pytest

from pagedllm import SamplingParams

PROMPTS = [f"Write one sentence about the number {i}." for i in range(10)]
CHINESE = ["请用中文介绍一下北京。", "用中文写一首关于春天的短诗。", "中国的四大发明是什么？"]
REPLACEMENT = "\ufffd"


def greedy(max_tokens: int = 8, **kwargs: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)


def test_a_bad_seed_fails_alone_and_its_batch_mates_run(smol_llm: Any) -> None:
    """10 requests, one with seed 2**70 (set after construction, so only admission
    can catch it): that one is a ValueError naming `seed` before any step runs; the
    other 9, in the same engine steps, get exactly the text they get alone."""
    engine = smol_llm.llm_engine
    sp = greedy(ignore_eos=True)
    want = [o.outputs[0] for o in smol_llm.generate(PROMPTS, sp, use_tqdm=False)]
    bad = SamplingParams(temperature=1.0, seed=1, max_tokens=8)
    bad.seed = 2**70
    added = []
    for i, prompt in enumerate(PROMPTS):
        if i == 4:
            with pytest.raises(ValueError, match=r"^seed must be in \[-2\*\*63, 2\*\*63 - 1\]"):
                engine.add_request(f"iso-{i}", prompt, bad)
            continue
        engine.add_request(f"iso-{i}", prompt, sp)
        added.append(i)
    finals: dict[str, Any] = {}
    while engine.has_unfinished_requests():
        finals.update({o.request_id: o for o in engine.step() if o.finished})
    for i in added:
        comp = finals[f"iso-{i}"].outputs[0]
        assert (comp.text, comp.finish_reason) == (want[i].text, want[i].finish_reason)
        assert comp.text and comp.finish_reason == "length"
    assert engine.get_num_free_blocks() == engine.kv_cache_manager.num_blocks


def test_generate_with_one_bad_request_raises_and_leaves_nothing_behind(smol_llm: Any) -> None:
    params = [greedy() for _ in PROMPTS]
    params[3].seed = -(2**70)
    params[7].bad_words = [12, 34]  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^seed"):
        smol_llm.generate(PROMPTS, params, use_tqdm=False)
    engine = smol_llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert engine.get_num_free_blocks() == engine.kv_cache_manager.num_blocks
    with pytest.raises(ValueError, match=r"^bad_words must be a string or a list of strings"):
        smol_llm.generate(PROMPTS[0], greedy(bad_words=[[1, 2]]), use_tqdm=False)


def test_seeded_sampling_works_across_the_whole_64_bit_range(smol_llm: Any) -> None:
    seeds = [-(2**63), -1, 2**63 - 1]
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=4) for s in seeds]
    outs = smol_llm.generate([PROMPTS[0]] * 3, params, use_tqdm=False)
    again = smol_llm.generate([PROMPTS[0]] * 3, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in again]
    assert all(len(o.outputs[0].token_ids) == 4 for o in outs)


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
def test_logprob_counts_are_capped_offline(smol_llm: Any, field: str) -> None:
    for value, message in [(21, "at most max_logprobs=20"), (-1, "the whole vocabulary")]:
        with pytest.raises(ValueError, match=rf"^{field}.*{message}"):
            smol_llm.generate(PROMPTS[0], greedy(**{field: value}), use_tqdm=False)
    out = smol_llm.generate(PROMPTS[0], greedy(**{field: 20}), use_tqdm=False)[0]
    steps = out.prompt_logprobs[1:] if field == "prompt_logprobs" else out.outputs[0].logprobs
    assert steps and all(20 <= len(step) <= 21 for step in steps)


def test_n_is_capped_by_max_num_seqs(smol_llm: Any) -> None:
    max_num_seqs = smol_llm.llm_engine.engine_config.scheduler_config.max_num_seqs
    with pytest.raises(ValueError, match=rf"^n must be at most max_num_seqs={max_num_seqs}"):
        smol_llm.generate(PROMPTS[0], greedy(1, n=max_num_seqs + 1), use_tqdm=False)


def test_max_tokens_inside_a_character_holds_back_its_bytes(smol_llm: Any) -> None:
    """Find where each greedy Chinese output ends inside a character, then cut there
    with max_tokens: the text (final and streamed) is the complete characters only."""
    tokenizer = smol_llm.get_tokenizer()
    full = smol_llm.generate(CHINESE, greedy(32, ignore_eos=True), use_tqdm=False)
    cases: list[tuple[str, list[int]]] = []
    for prompt, out in zip(CHINESE, full):
        ids = list(out.outputs[0].token_ids)
        cuts = [k for k in range(1, len(ids)) if tokenizer.decode(ids[:k]).endswith(REPLACEMENT)]
        cases += [(prompt, ids[:k]) for k in cuts[:1]]
    assert len(cases) >= 2, "no greedy output of these prompts ends inside a character"
    prompts = [prompt for prompt, _ in cases]
    params = [greedy(len(ids), ignore_eos=True) for _, ids in cases]
    wants = [tokenizer.decode(ids).rstrip(REPLACEMENT) for _, ids in cases]
    finals = smol_llm.generate(prompts, params, use_tqdm=False)
    assert [list(f.outputs[0].token_ids) for f in finals] == [ids for _, ids in cases]
    assert [f.outputs[0].text for f in finals] == wants
    streamed: dict[str, str] = {}
    for delta in smol_llm.stream(prompts, params):
        streamed[delta.request_id] = streamed.get(delta.request_id, "") + delta.outputs[0].text
    assert [streamed[rid] for rid in sorted(streamed, key=int)] == wants  # ids count up
    assert not any(w.endswith(REPLACEMENT) for w in wants)
