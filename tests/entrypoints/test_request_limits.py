"""Issue 14 over real servers and the real `openai` client: a bad request fails alone
with a 400 naming its field, the cost caps (n, logprobs) hold, prompt_logprobs come
back as vLLM returns them, and an output cut inside a character never ends in U+FFFD."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests
from remote_server import MODEL_NAME, RemoteServer, complete, metric_samples

PROMPTS = [f"Count from {i}:" for i in range(10)]
REPLACEMENT = "\ufffd"


def assert_idle(server: RemoteServer) -> None:
    samples = metric_samples(server)
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert samples[(f"pagedllm:{gauge}", ())] == 0.0, gauge


def test_a_bad_seed_fails_alone_among_concurrent_requests(
    client: openai.OpenAI, server: RemoteServer
) -> None:
    want = [complete(client, p, extra_body={"ignore_eos": True}).choices[0].text for p in PROMPTS]

    def run(i: int) -> Any:
        extra = {"ignore_eos": True, **({"seed": 2**70} if i == 4 else {})}
        try:
            return complete(client, PROMPTS[i], extra_body=extra).choices[0].text
        except openai.BadRequestError as exc:
            return exc

    with ThreadPoolExecutor(10) as pool:
        got = list(pool.map(run, range(10)))
    assert isinstance(got[4], openai.BadRequestError) and "seed" in str(got[4])
    assert [g for i, g in enumerate(got) if i != 4] == [w for i, w in enumerate(want) if i != 4]
    assert all(want)
    assert_idle(server)


def test_a_bad_seed_among_streams(client: openai.OpenAI, server: RemoteServer) -> None:
    def run(i: int) -> Any:
        extra = {"ignore_eos": True, **({"seed": -(2**70)} if i == 2 else {})}
        try:
            chunks = complete(client, PROMPTS[i], stream=True, extra_body=extra)
            return [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        except openai.BadRequestError as exc:
            return exc

    with ThreadPoolExecutor(5) as pool:
        got = list(pool.map(run, range(5)))
    assert isinstance(got[2], openai.BadRequestError) and "seed" in str(got[2])
    assert [g for i, g in enumerate(got) if i != 2] == ["length"] * 4
    assert_idle(server)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"seed": 2**70}, "seed"),
        ({"bad_words": [11, 12]}, "bad_words"),
        ({"bad_words": [[11, 12], [13]]}, "bad_words"),
        ({"n": 0}, "n"),
        ({"min_p": 3}, "min_p"),
        ({"logprobs": 21}, "logprobs"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
    ],
)
def test_legacy_generate_rejects_bad_values_with_400(
    legacy_server: RemoteServer, extra: dict[str, Any], field: str
) -> None:
    body = {"prompt": "Hello", "max_tokens": 4, **extra}
    response = requests.post(legacy_server.url("/generate"), json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(field)
    assert requests.get(legacy_server.url("/health"), timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"bad_words": [1, 2]}, "bad_words"),
        ({"min_p": 3}, "min_p"),
    ],
)
def test_completions_and_chat_reject_bad_values_with_400(
    client: openai.OpenAI, extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=field):
        complete(client, "Hello", extra_body=extra)
    with pytest.raises(openai.BadRequestError, match=field):
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            extra_body=extra,
        )


def test_n_above_max_num_seqs_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="n must be at most max_num_seqs"):
        complete(client, "Hi", n=257, max_tokens=1)


def check_prompt_logprobs(steps: list[Any], prompt_ids: list[int], k: int) -> None:
    assert steps[0] is None and len(steps) == len(prompt_ids)
    for token_id, step in zip(prompt_ids[1:], steps[1:]):
        assert str(token_id) in step and k <= len(step) <= k + 1
        for entry in step.values():
            assert set(entry) == {"logprob", "rank", "decoded_token"}
            assert entry["logprob"] <= 0.0 and entry["rank"] >= 1


def test_prompt_logprobs_in_completions_and_chat(server: RemoteServer) -> None:
    prompt = "The capital of France is"
    prompt_ids = requests.post(server.url("/tokenize"), json={"prompt": prompt}).json()["tokens"]
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 2, "prompt_logprobs": 3}
    choice = requests.post(server.url("/v1/completions"), json=body, timeout=60).json()
    check_prompt_logprobs(choice["choices"][0]["prompt_logprobs"], prompt_ids, 3)
    messages = [{"role": "user", "content": "Hi"}]
    chat_ids = requests.post(server.url("/tokenize"), json={"messages": messages}).json()["tokens"]
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 2, "prompt_logprobs": 2}
    chat = requests.post(server.url("/v1/chat/completions"), json=body, timeout=60).json()
    check_prompt_logprobs(chat["prompt_logprobs"], chat_ids, 2)
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 2}
    plain = requests.post(server.url("/v1/completions"), json=body, timeout=60)
    assert plain.json()["choices"][0]["prompt_logprobs"] is None


def sse_texts(response: requests.Response) -> tuple[str, str | None]:
    text, finish = "", None
    for line in response.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            for choice in json.loads(line[6:])["choices"]:
                text += choice["text"]
                finish = choice["finish_reason"] or finish
    return text, finish


def test_max_tokens_inside_a_character_over_the_server(server: RemoteServer, smol_llm: Any) -> None:
    """The cut points come from the same model run offline (greedy, so the server
    produces the same tokens); the server's text, streamed or not, is whole characters."""
    from pagedllm import SamplingParams

    tokenizer = smol_llm.get_tokenizer()
    prompts = ["请用中文介绍一下北京。", "用中文写一首关于春天的短诗。", "中国的四大发明是什么？"]
    sp = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    cases = []
    for prompt, out in zip(prompts, smol_llm.generate(prompts, sp, use_tqdm=False)):
        ids = list(out.outputs[0].token_ids)
        cuts = [k for k in range(1, len(ids)) if tokenizer.decode(ids[:k]).endswith(REPLACEMENT)]
        cases += [(prompt, k, tokenizer.decode(ids[:k]).rstrip(REPLACEMENT)) for k in cuts[:1]]
    assert len(cases) >= 2
    url = server.url("/v1/completions")
    for prompt, k, want in cases:
        body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": k, "temperature": 0.0}
        body["ignore_eos"] = True
        final = requests.post(url, json=body, timeout=60).json()["choices"][0]
        assert (final["text"], final["finish_reason"]) == (want, "length")
        streamed = requests.post(url, json={**body, "stream": True}, stream=True, timeout=60)
        assert sse_texts(streamed) == (want, "length")
