"""SSE streaming on the real server: chunk format, role chunk, usage chunk, [DONE],
32 concurrent streams, and a client that disconnects mid-stream."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import openai
import requests
from remote_server import MODEL_NAME, PROMPT, RemoteServer, complete, metric_samples


def sse_chunks(response: requests.Response) -> list[Any]:
    """The JSON chunks of an SSE body; asserts the framing and the final [DONE]."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[len("data: ") :]) for e in events[:-1]]


def test_completion_stream_matches_non_streamed(
    client: openai.OpenAI, server: RemoteServer
) -> None:
    reference = complete(client, PROMPT, max_tokens=8).choices[0].text
    body = {
        "model": MODEL_NAME,
        "prompt": PROMPT,
        "max_tokens": 8,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = requests.post(server.url("/v1/completions"), json=body, stream=True, timeout=60)
    chunks = sse_chunks(response)
    with_choices = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["text"] for c in with_choices) == reference
    reasons = [c["choices"][0]["finish_reason"] for c in with_choices]
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert all(c["object"] == "text_completion" and c["model"] == MODEL_NAME for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


def test_chat_stream_with_the_openai_client(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Name three colors."}]
    args: Any = {"model": MODEL_NAME, "messages": messages, "max_tokens": 10, "temperature": 0.0}
    reference = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].object == "chat.completion.chunk"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == reference
    finished = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finished == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10


def test_chat_stream_n2_raw(server: RemoteServer) -> None:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "你好"}],
        "max_tokens": 4,
        "n": 2,
        "temperature": 0.7,
        "seed": 3,
        "stream": True,
    }
    response = requests.post(server.url("/v1/chat/completions"), json=body, stream=True, timeout=60)
    chunks = sse_chunks(response)
    roles = [c["choices"][0] for c in chunks[:2]]
    assert [r["index"] for r in roles] == [0, 1]
    assert all(r["delta"] == {"role": "assistant", "content": ""} for r in roles)
    finished = {c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]}
    assert finished == {0, 1}


def test_32_concurrent_streams_match_greedy(client: openai.OpenAI, server: RemoteServer) -> None:
    prompts = [PROMPT, "Water is made of", "My favourite food is", "1, 2, 3, 4,"]
    reference = {p: complete(client, p, max_tokens=8).choices[0].text for p in prompts}

    async def stream_one(aclient: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await aclient.completions.create(
            model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0.0, stream=True
        )
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def run_all() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)
        async with aclient:
            tasks = [stream_one(aclient, prompts[i % len(prompts)]) for i in range(32)]
            return await asyncio.gather(*tasks)

    results = asyncio.run(run_all())
    for i, text in enumerate(results):
        assert text == reference[prompts[i % len(prompts)]], i


def _wait_until_idle(server: RemoteServer, timeout_s: float = 30.0) -> dict[Any, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = metric_samples(server)
        idle = samples[("pagedllm:num_requests_running", ())] == 0
        idle = idle and samples[("pagedllm:kv_cache_usage_perc", ())] == 0.0
        if idle or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_disconnect_mid_stream_aborts_and_frees_blocks(server: RemoteServer) -> None:
    abort = ("pagedllm:request_success_total", (("finished_reason", "abort"),))
    before = _wait_until_idle(server)
    body = {
        "model": MODEL_NAME,
        "prompt": PROMPT,
        "max_tokens": 1500,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
    }
    with requests.Session() as session:
        response = session.post(server.url("/v1/completions"), json=body, stream=True, timeout=60)
        events = response.iter_lines()
        received = [line for line, _ in zip(events, range(6)) if line]
        assert received and received[0].startswith(b"data: ")
        running = metric_samples(server)
        assert running[("pagedllm:num_requests_running", ())] == 1
        assert running[("pagedllm:kv_cache_usage_perc", ())] > 0
        response.close()  # the client goes away long before 1500 tokens
    after = _wait_until_idle(server)
    assert after[("pagedllm:num_requests_running", ())] == 0
    assert after[("pagedllm:kv_cache_usage_perc", ())] == 0.0
    assert after[abort] == before[abort] + 1
    assert requests.get(server.url("/health"), timeout=10).status_code == 200
