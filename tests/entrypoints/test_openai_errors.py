"""Bad input gets the documented status and an OpenAI error body, and the server
stays healthy; --api-key guards /v1 routes with 401."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import requests
from remote_server import API_KEY, MODEL_NAME, PROMPT, RemoteServer, complete

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]

# (path, JSON body (or raw bytes), expected status, a fragment of the message)
BAD_REQUESTS = [
    pytest.param(COMPLETIONS, {"prompt": "hi", "temperature": -1}, 400, "temperature", id="temp<0"),
    pytest.param(COMPLETIONS, {"prompt": "hi", "top_p": 0}, 400, "top_p", id="top_p=0"),
    pytest.param(COMPLETIONS, {"prompt": "hi", "n": 0}, 400, "n must be", id="n=0"),
    pytest.param(COMPLETIONS, {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens", id="max<0"),
    pytest.param(COMPLETIONS, {"prompt": "hi", "presence_penalty": 5}, 400, "presence", id="pp=5"),
    pytest.param(COMPLETIONS, {"prompt": "hi " * 2100}, 400, "maximum context length", id="long"),
    pytest.param(COMPLETIONS, {"prompt": "hi", "max_tokens": 5000}, 400, "too large", id="max>len"),
    pytest.param(COMPLETIONS, {"prompt": ""}, 400, "empty", id="empty-prompt"),
    pytest.param(COMPLETIONS, {"prompt": []}, 400, "empty", id="empty-list"),
    pytest.param(COMPLETIONS, {"prompt": [10**7]}, 400, "vocabulary", id="bad-token-id"),
    pytest.param(COMPLETIONS, {"prompt": "hi", "logprobs": 21}, 400, "logprobs", id="logprobs>20"),
    pytest.param(COMPLETIONS, {"prompt": "hi", "suffix": "!"}, 400, "suffix", id="suffix"),
    pytest.param(COMPLETIONS, {"prompt": "hi", "stop": [""]}, 400, "stop", id="empty-stop"),
    pytest.param(
        COMPLETIONS, {"prompt": "hi", "logit_bias": {"x": 1}}, 400, "logit_bias", id="bias"
    ),
    pytest.param(
        COMPLETIONS, {"prompt": "hi", "temperature": "hot"}, 400, "temperature", id="type"
    ),
    pytest.param(COMPLETIONS, {"max_tokens": 3}, 400, "prompt", id="no-prompt"),
    pytest.param(
        COMPLETIONS,
        {"prompt": "hi", "priority": 1},
        400,
        "priority scheduling is not enabled",
        id="priority-without-the-policy",
    ),
    pytest.param(CHAT, {"messages": USER, "priority": "high"}, 400, "priority", id="priority-type"),
    pytest.param(
        COMPLETIONS,
        {"prompt": "hi", "stream_options": {"include_usage": True}},
        400,
        "stream=True",
        id="stream-options-without-stream",
    ),
    pytest.param(COMPLETIONS, {"prompt": "hi", "model": "gpt-4"}, 404, "gpt-4", id="unknown-model"),
    pytest.param(COMPLETIONS, b'{"prompt": "hi",', 400, "JSON", id="malformed-json"),
    pytest.param(COMPLETIONS, b"[1, 2]", 400, "Invalid request", id="not-an-object"),
    pytest.param(CHAT, {"messages": []}, 400, "at least one message", id="empty-messages"),
    pytest.param(CHAT, {"messages": "hi"}, 400, "messages", id="messages-not-list"),
    pytest.param(CHAT, {"messages": [{"content": "hi"}]}, 400, "role", id="no-role"),
    pytest.param(
        CHAT,
        {"messages": USER, "logprobs": True, "top_logprobs": 25},
        400,
        "top_logprobs",
        id="top25",
    ),
    pytest.param(
        CHAT, {"messages": USER, "top_logprobs": 2}, 400, "logprobs", id="top-no-logprobs"
    ),
    pytest.param(
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "text content",
        id="image-part",
    ),
    pytest.param(CHAT, {"messages": USER, "max_tokens": 0}, 400, "max_tokens", id="chat-max=0"),
    pytest.param(CHAT, {"messages": USER, "model": "nope"}, 404, "nope", id="chat-unknown-model"),
    pytest.param("/v1/embeddings", {"input": "hi"}, 400, "Embeddings", id="embed-on-generate"),
    pytest.param("/v1/nothing-here", {}, 404, "Not Found", id="unknown-route"),
]


@pytest.mark.parametrize("path,body,status,fragment", BAD_REQUESTS)
def test_bad_request_gets_openai_error(
    server: RemoteServer, path: str, body: Any, status: int, fragment: str
) -> None:
    if isinstance(body, bytes):
        headers = {"Content-Type": "application/json"}
        response = requests.post(server.url(path), data=body, headers=headers, timeout=30)
    else:
        response = requests.post(server.url(path), json={"model": MODEL_NAME, **body}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["type"]
    assert fragment.lower() in error["message"].lower()


def test_server_is_healthy_after_bad_requests(server: RemoteServer, client: openai.OpenAI) -> None:
    assert requests.get(server.url("/health"), timeout=10).status_code == 200
    assert "Paris" in complete(client, PROMPT).choices[0].text


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        complete(client, PROMPT, temperature=-1)
    assert "temperature" in bad.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)


def test_api_key_guards_v1_routes(auth_server: RemoteServer) -> None:
    url = auth_server.url("/v1/models")
    missing = requests.get(url, timeout=10)
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == 401
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 2}
    posted = requests.post(auth_server.url("/v1/completions"), json=body, timeout=10)
    assert posted.status_code == 401
    for path in ("/score", "/rerank", "/v2/rerank"):  # vLLM's model-running routes
        assert requests.post(auth_server.url(path), json={}, timeout=10).status_code == 401
    assert requests.get(auth_server.url("/health"), timeout=10).status_code == 200
    assert requests.get(auth_server.url("/metrics"), timeout=10).status_code == 200


def test_api_key_accepts_the_right_key(auth_server: RemoteServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=auth_server.url("/v1"), api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=auth_server.url("/v1"), api_key=API_KEY, max_retries=0)
    assert [m.id for m in good.models.list().data] == [MODEL_NAME]
    assert "Paris" in complete(good, PROMPT).choices[0].text


# (body, the field named in the error's `param`, a fragment of the message): the
# engine's admission check (engine/validation.py) answers these, through the server.
PARAM_ERRORS = [
    pytest.param(
        {"max_tokens": 2048},
        "max_tokens",
        "'max_tokens' or 'max_completion_tokens' is too large: 2048. This model's maximum "
        "context length is 2048 tokens and your request has",
        id="max_tokens-past-context",
    ),
    pytest.param({"logit_bias": {"49152": 5}}, "logit_bias", "logit_bias", id="bias-id"),
    pytest.param(
        {"allowed_token_ids": [1, 10**7]}, "allowed_token_ids", "vocabulary", id="allowed"
    ),
    pytest.param({"stop_token_ids": [10**7]}, "stop_token_ids", "vocabulary", id="stop-ids"),
    pytest.param({"prompt": [1, 10**7]}, "prompt", "vocabulary", id="prompt-id"),
    pytest.param({"prompt": "hi " * 2100}, "prompt", "maximum context length", id="long"),
]


@pytest.mark.parametrize("body,param,fragment", PARAM_ERRORS)
def test_admission_errors_name_the_field(
    server: RemoteServer, body: dict[str, Any], param: str, fragment: str
) -> None:
    request = {"model": MODEL_NAME, "prompt": PROMPT, **body}
    response = requests.post(server.url(COMPLETIONS), json=request, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "BadRequestError"
    assert fragment in error["message"]


def test_openai_client_sees_the_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=5000,
        )
    assert bad.value.param == "max_tokens"
    assert "is too large: 5000" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        complete(client, PROMPT, logit_bias={"49152": 1})
    assert bad.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError) as bad:
        complete(client, PROMPT, extra_body={"allowed_token_ids": [49152]})
    assert bad.value.param == "allowed_token_ids"
