"""The real embedded model (SmolLM2-135M-Instruct GGUF): text in, text out."""

from __future__ import annotations

from typing import Any

from pagedllm import SamplingParams


def test_generate_text_and_chat(smol_llm: Any) -> None:
    outs = smol_llm.generate(
        ["The capital of France is"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False
    )
    assert "Paris" in outs[0].outputs[0].text
    assert outs[0].outputs[0].finish_reason == "length"
    chat = smol_llm.chat(
        [{"role": "user", "content": "What is 2+2? Answer with one number."}],
        SamplingParams(temperature=0, max_tokens=16),
        use_tqdm=False,
    )
    assert "4" in chat[0].outputs[0].text


def test_stop_strings_are_cut_and_reported(smol_llm: Any) -> None:
    sp = SamplingParams(temperature=0, max_tokens=40)
    full = smol_llm.generate(["Count: 1, 2, 3,"], sp, use_tqdm=False)[0].outputs[0].text
    assert " 5" in full
    stopped = smol_llm.generate(
        ["Count: 1, 2, 3,"],
        SamplingParams(temperature=0, max_tokens=40, stop=[" 5"]),
        use_tqdm=False,
    )[0].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == " 5"
    assert stopped.text == full[: full.index(" 5")]
    kept = smol_llm.generate(
        ["Count: 1, 2, 3,"],
        SamplingParams(temperature=0, max_tokens=40, stop=[" 5"], include_stop_str_in_output=True),
        use_tqdm=False,
    )[0].outputs[0]
    assert kept.text == full[: full.index(" 5") + 2]


def test_streaming_chinese_has_no_broken_characters(smol_llm: Any) -> None:
    prompts = ["请用中文介绍一下北京。", "写一句关于大海的诗：🌊"]
    sp = SamplingParams(temperature=0, max_tokens=40)
    final = {o.request_id: o.outputs[0].text for o in []}
    pieces: dict[str, list[str]] = {}
    for delta in smol_llm.stream(prompts, sp):
        for c in delta.outputs:
            assert "\ufffd" not in c.text
            pieces.setdefault(delta.request_id, []).append(c.text)
    final = [o.outputs[0].text for o in smol_llm.generate(prompts, sp, use_tqdm=False)]
    assert sorted("".join(p) for p in pieces.values()) == sorted(final)
    assert any(len(p) > 3 for p in pieces.values())


def test_greedy_batch_equals_one_by_one(smol_llm: Any) -> None:
    prompts = ["Hello, my name is", "Write a haiku about rain.", "1 + 1 =", "Le chat est"]
    sp = SamplingParams(temperature=0, max_tokens=12)
    batch = [o.outputs[0].token_ids for o in smol_llm.generate(prompts, sp, use_tqdm=False)]
    alone = [smol_llm.generate([p], sp, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
    assert batch == alone


def test_bad_words_are_never_generated(smol_llm: Any) -> None:
    sp = SamplingParams(temperature=0, max_tokens=12)
    prompt = ["The capital of France is"]
    assert "Paris" in smol_llm.generate(prompt, sp, use_tqdm=False)[0].outputs[0].text
    banned = SamplingParams(temperature=0, max_tokens=12, bad_words=["Paris"])
    text = smol_llm.generate(prompt, banned, use_tqdm=False)[0].outputs[0].text
    assert "Paris" not in text and text.strip()
