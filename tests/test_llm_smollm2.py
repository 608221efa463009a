"""The real embedded model (SmolLM2-135M-Instruct GGUF): text in, text out."""

from __future__ import annotations

from typing import Any

import pytest

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


def test_chat_continues_the_final_message_and_fills_template_variables(smol_llm: Any) -> None:
    tokenizer = smol_llm.get_tokenizer()
    sp = SamplingParams(temperature=0, max_tokens=6)
    partial = [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "The fruit I pick is the"},
    ]
    continued = smol_llm.chat(
        partial, sp, add_generation_prompt=False, continue_final_message=True, use_tqdm=False
    )[0]
    assert tokenizer.decode(continued.prompt_token_ids).endswith("The fruit I pick is the")
    new_turn = smol_llm.chat(partial, sp, use_tqdm=False)[0]
    assert not tokenizer.decode(new_turn.prompt_token_ids).endswith("The fruit I pick is the")
    with pytest.raises(ValueError, match="continue_final_message"):
        smol_llm.chat(partial, sp, continue_final_message=True, use_tqdm=False)
    template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}|{{ greeting }}|"
        "{% for t in tools %}{{ t['function']['name'] }}{% endfor %}"
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    rendered = smol_llm.chat(
        [{"role": "user", "content": "Hi"}],
        sp,
        use_tqdm=False,
        chat_template=template,
        add_generation_prompt=False,
        tools=tools,
        chat_template_kwargs={"greeting": "hello"},
    )[0]
    assert tokenizer.decode(rendered.prompt_token_ids) == "Hi|hello|get_weather"
    with pytest.raises(ValueError, match="chat_template_kwargs may not set tokenize"):
        smol_llm.chat(partial, sp, use_tqdm=False, chat_template_kwargs={"tokenize": False})
