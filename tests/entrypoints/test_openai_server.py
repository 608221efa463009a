"""The OpenAI server with the real `openai` client and the real embedded model:
models, completions, chat, tokenize/detokenize, metrics (greedy, few tokens)."""

from __future__ import annotations

import openai
import pytest
import requests
from remote_server import MODEL_NAME, PROMPT, RemoteServer, complete, metric_samples


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert models[0].max_model_len == 2048  # type: ignore[attr-defined]


def test_completion_from_string(client: openai.OpenAI, server: RemoteServer) -> None:
    result = complete(client, PROMPT)
    choice = result.choices[0]
    assert "Paris" in choice.text
    assert choice.finish_reason == "length"
    tokens = requests.post(server.url("/tokenize"), json={"prompt": PROMPT}, timeout=10).json()
    assert result.usage.prompt_tokens == tokens["count"]
    assert result.usage.completion_tokens == 6
    assert result.usage.total_tokens == tokens["count"] + 6
    assert result.object == "text_completion" and result.model == MODEL_NAME


def test_completion_prompt_forms_agree(client: openai.OpenAI, server: RemoteServer) -> None:
    other = "Water is made of"
    by_text = {p: complete(client, p).choices[0].text for p in (PROMPT, other)}
    as_list = complete(client, [PROMPT, other]).choices
    assert [c.index for c in as_list] == [0, 1]
    assert [c.text for c in as_list] == [by_text[PROMPT], by_text[other]]
    ids = [
        requests.post(server.url("/tokenize"), json={"prompt": p}, timeout=10).json()["tokens"]
        for p in (PROMPT, other)
    ]
    assert complete(client, ids[0]).choices[0].text == by_text[PROMPT]
    assert [c.text for c in complete(client, ids).choices] == [by_text[PROMPT], by_text[other]]


def test_truncate_prompt_tokens_keeps_the_last_tokens(
    client: openai.OpenAI, server: RemoteServer
) -> None:
    tokens = requests.post(server.url("/tokenize"), json={"prompt": PROMPT}, timeout=10).json()
    ids = tokens["tokens"]
    cut = complete(client, PROMPT, extra_body={"truncate_prompt_tokens": 3})
    assert cut.usage.prompt_tokens == 3
    assert cut.choices[0].text == complete(client, ids[-3:]).choices[0].text
    whole = complete(client, PROMPT, extra_body={"truncate_prompt_tokens": -1})
    assert whole.usage.prompt_tokens == len(ids)  # -1: up to max_model_len
    zero = requests.post(
        server.url("/v1/completions"), json={"prompt": PROMPT, "truncate_prompt_tokens": 0}
    )
    assert zero.status_code == 400
    assert zero.json()["error"]["param"] == "truncate_prompt_tokens"


def test_completion_n_echo_and_stop(client: openai.OpenAI) -> None:
    sampled = complete(client, PROMPT, n=2, temperature=0.8, seed=1)
    assert sorted(c.index for c in sampled.choices) == [0, 1]
    assert sampled.usage.completion_tokens == 12
    echoed = complete(client, PROMPT, echo=True).choices[0].text
    assert echoed.startswith(PROMPT) and len(echoed) > len(PROMPT)
    stopped = complete(client, PROMPT, max_tokens=12, stop=["\n"]).choices[0]
    assert stopped.finish_reason == "stop" and "\n" not in stopped.text
    assert "Paris" in stopped.text


def test_completion_logprobs(client: openai.OpenAI) -> None:
    result = complete(client, PROMPT, logprobs=2)
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 6
    assert "".join(logprobs.tokens) == result.choices[0].text
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs)
    # Greedy: the chosen token is the most likely one.
    for token, lp, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert max(top.values()) == pytest.approx(lp, abs=1e-4)
        assert token in top
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    echoed = complete(client, PROMPT, logprobs=1, echo=True, max_tokens=2)
    echo_logprobs = echoed.choices[0].logprobs
    assert len(echo_logprobs.tokens) == echoed.usage.prompt_tokens + 2
    assert echo_logprobs.token_logprobs[0] is None  # the first prompt token has no logprob
    assert all(lp is not None for lp in echo_logprobs.token_logprobs[1:])
    assert "".join(echo_logprobs.tokens) == echoed.choices[0].text


def test_logprobs_tokens_as_token_ids(client: openai.OpenAI, server: RemoteServer) -> None:
    as_ids = {"return_tokens_as_token_ids": True}
    result = complete(client, PROMPT, logprobs=2, extra_body=as_ids)
    logprobs = result.choices[0].logprobs
    ids = [int(t.removeprefix("token_id:")) for t in logprobs.tokens]
    assert all(t.startswith("token_id:") for t in logprobs.tokens)
    assert all(all(k.startswith("token_id:") for k in top) for top in logprobs.top_logprobs)
    detokenized = requests.post(server.url("/detokenize"), json={"tokens": ids}, timeout=10)
    assert detokenized.json()["prompt"] == result.choices[0].text
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body=as_ids,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(c.token.startswith("token_id:") for c in content)
    assert all(t.token.startswith("token_id:") for c in content for t in c.top_logprobs)
    assert content[0].bytes == list(content[0].token.encode())
    plain = complete(client, PROMPT, logprobs=1)  # the default: text tokens
    assert "".join(plain.choices[0].logprobs.tokens) == plain.choices[0].text


def test_chat_completion(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    result = client.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=12,
        temperature=0.0,  # type: ignore[arg-type]
    )
    message = result.choices[0].message
    assert message.role == "assistant" and "Paris" in (message.content or "")
    assert result.usage is not None and result.usage.completion_tokens <= 12
    assert result.object == "chat.completion"


def test_chat_chinese_prompt(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "请用中文介绍一下北京。"}],
        max_tokens=16,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
    )
    content = result.choices[0].message.content or ""
    assert content and "\ufffd" not in content
    entries = result.choices[0].logprobs.content  # type: ignore[union-attr]
    assert len(entries) == result.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)


def test_tokenize_detokenize_round_trip(server: RemoteServer) -> None:
    text = "Hello, 世界! pagedllm"
    tokens = requests.post(server.url("/tokenize"), json={"prompt": text}, timeout=10).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] == 2048
    back = requests.post(server.url("/detokenize"), json={"tokens": tokens["tokens"]}, timeout=10)
    assert back.json() == {"prompt": text}
    chat = requests.post(
        server.url("/tokenize"), json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10
    ).json()
    assert chat["count"] > tokens["count"] // 2


def test_embeddings_on_a_generation_model_is_400(server: RemoteServer) -> None:
    response = requests.post(server.url("/v1/embeddings"), json={"input": "hi"}, timeout=10)
    assert response.status_code == 400
    assert "does not support the Embeddings API" in response.json()["error"]["message"]


def test_health_and_version(server: RemoteServer) -> None:
    assert requests.get(server.url("/health"), timeout=10).status_code == 200
    assert requests.get(server.url("/version"), timeout=10).json()["version"]
    assert requests.get(server.url("/ping"), timeout=10).status_code == 200
    assert requests.post(server.url("/ping"), timeout=10).status_code == 200


def test_metrics_count_traffic(client: openai.OpenAI, server: RemoteServer) -> None:
    before = metric_samples(server)
    complete(client, "One, two, three,")
    after = metric_samples(server)
    for name in (
        "pagedllm:prompt_tokens_total",
        "pagedllm:generation_tokens_total",
        "pagedllm:e2e_request_latency_seconds_count",
        "pagedllm:time_to_first_token_seconds_count",
        "pagedllm:inter_token_latency_seconds_count",
        "pagedllm:time_per_output_token_seconds_count",
        "pagedllm:prefix_cache_queries_total",
    ):
        assert after[(name, ())] > before.get((name, ()), 0), name
    success = ("pagedllm:request_success_total", (("finished_reason", "length"),))
    assert after[success] == before[success] + 1
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert after[(f"pagedllm:{gauge}", ())] == 0.0
    assert ("pagedllm:num_preemptions_total", ()) in after
    assert ("pagedllm:prefix_cache_hits_total", ()) in after
