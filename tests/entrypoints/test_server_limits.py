"""Heavy or hostile requests against the shared real server: a 20 MB prompt is
tokenized off the event loop (/health keeps answering), bodies over the limit get 413,
chat templates are rendered with a deadline and a sandbox, and bad text or template
arguments are 400s naming the field. CORS answers preflights."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from remote_server import CHAT_TEMPLATE_TIMEOUT_S, MODEL_NAME, RemoteServer

HUGE_PROMPT = "hello " * (20_000_000 // 6)  # 20 MB: tens of seconds to tokenize here
USER = [{"role": "user", "content": "hi"}]
LOOP_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


def _post(server: RemoteServer, path: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(server.url(path), json=body, timeout=120, **kwargs)


def _assert_error(
    response: requests.Response, status: int, fragment: str, param: str | None
) -> None:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["code"] == status
    if param is not None:
        assert error["param"] == param


def test_health_answers_while_a_20mb_prompt_is_tokenized(server: RemoteServer) -> None:
    result: dict[str, requests.Response] = {}

    def send() -> None:
        result["response"] = _post(server, "/v1/completions", {"prompt": HUGE_PROMPT})

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    while sender.is_alive():
        start = time.monotonic()
        assert requests.get(server.url("/health"), timeout=5).status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.2)
    sender.join()
    _assert_error(result["response"], 400, "maximum context length", None)
    assert len(latencies) >= 10, "the prompt was tokenized too fast to show anything"
    assert max(latencies) < 1.0, latencies


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(server: RemoteServer, chunked: bool) -> None:
    body = b'{"prompt": "' + b"a" * (33 * 2**20) + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 2**20):
            yield body[start : start + 2**20]

    response = requests.post(
        server.url("/v1/completions"),
        data=chunks() if chunked else body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    _assert_error(response, 413, "--max-request-body-size", None)
    assert requests.get(server.url("/health"), timeout=5).status_code == 200


def test_body_under_the_limit_is_accepted_chunked(server: RemoteServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "The capital of France is",'
        yield b' "max_tokens": 2}'

    response = requests.post(
        server.url("/v1/completions"),
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_endless_chat_template_is_400_and_the_server_keeps_serving(
    server: RemoteServer, path: str
) -> None:
    start = time.monotonic()
    response = _post(server, path, {"messages": USER, "chat_template": LOOP_TEMPLATE})
    elapsed = time.monotonic() - start
    _assert_error(response, 400, "took longer than", None)
    assert elapsed < CHAT_TEMPLATE_TIMEOUT_S + 5
    tokenized = _post(server, "/tokenize", {"messages": USER})
    assert tokenized.status_code == 200 and tokenized.json()["count"] > 0


BAD_TEXT = "\ud800abc"  # a lone surrogate: valid JSON, not text


@pytest.mark.parametrize(
    "path,body,fragment,param",
    [
        ("/v1/completions", {"prompt": BAD_TEXT}, "surrogate", "prompt"),
        ("/v1/completions", {"prompt": ["ok", BAD_TEXT]}, "surrogate", "prompt"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": BAD_TEXT}]},
            "surrogate",
            "messages",
        ),
        ("/tokenize", {"prompt": BAD_TEXT}, "surrogate", "prompt"),
        (
            "/tokenize",
            {"messages": [{"role": "user", "content": BAD_TEXT}]},
            "surrogate",
            "messages",
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "chat_template_kwargs": {"tokenize": True}},
            "tokenize",
            "chat_template_kwargs",
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "chat_template_kwargs": {"chat_template": "x", "conversation": []}},
            "conversation",
            "chat_template_kwargs",
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "chat_template": "{{ 1/0 }}"},
            "ZeroDivisionError",
            None,
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "chat_template": "{% include 'x' %}"},
            "include",
            None,
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "chat_template": "{% import 'x' as y %}"},
            "import",
            None,
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "chat_template": "{% extends 'x' %}"},
            "extends",
            None,
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "chat_template": "{{ 'x' * 10**12 }}"},
            "sequence",
            None,
        ),
        (
            "/v1/chat/completions",
            {"messages": USER, "chat_template": "{% for %}"},
            "syntax error",
            None,
        ),
    ],
)
def test_bad_text_and_templates_are_400(
    server: RemoteServer, path: str, body: dict[str, Any], fragment: str, param: str | None
) -> None:
    _assert_error(_post(server, path, {"model": MODEL_NAME, **body}), 400, fragment, param)


def test_cors_preflight(server: RemoteServer) -> None:
    response = requests.options(
        server.url("/v1/completions"),
        headers={
            "Origin": "http://example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "http://example.com")
