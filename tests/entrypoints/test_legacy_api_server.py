"""The legacy /generate server, used exactly as vLLM's guide clients use it."""

from __future__ import annotations

import json

import requests
from remote_server import PROMPT, RemoteServer


def test_generate_like_the_vllm_guide(legacy_server: RemoteServer) -> None:
    url = legacy_server.url("/generate")
    text = requests.post(url, json={"prompt": PROMPT, "max_tokens": 16}).json()["text"][0]
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)


def test_generate_n_and_greedy(legacy_server: RemoteServer) -> None:
    url = legacy_server.url("/generate")
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0.0}
    texts = requests.post(url, json=body, timeout=60).json()["text"]
    assert len(texts) == 1 and "Paris" in texts[0]
    two = requests.post(url, json={**body, "n": 2, "temperature": 0.8}, timeout=60).json()["text"]
    assert len(two) == 2 and all(t.startswith(PROMPT) for t in two)


def test_generate_stream_lines(legacy_server: RemoteServer) -> None:
    url = legacy_server.url("/generate")
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0.0}
    final = requests.post(url, json=body, timeout=60).json()["text"][0]
    response = requests.post(url, json={**body, "stream": True}, stream=True, timeout=60)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.iter_lines() if line]
    texts = [line["text"][0] for line in lines]
    assert len(texts) > 1 and texts[-1] == final
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # full text so far


def test_generate_bad_input_is_400(legacy_server: RemoteServer) -> None:
    url = legacy_server.url("/generate")
    for body in ({"prompt": "hi", "temperature": -1}, {"prompt": "hi", "bogus": 1}, {"n": 2}):
        response = requests.post(url, json=body, timeout=30)
        assert response.status_code == 400, body
        assert response.json()["error"]["message"]
    broken = requests.post(url, data=b"{oops", timeout=30)
    assert broken.status_code == 400
    assert requests.get(legacy_server.url("/health"), timeout=10).status_code == 200
