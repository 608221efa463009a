"""The app in process over the real engine core (the session's shared SmolLM2 core,
stepped on a thread of this process):
injected faults (a failed step answers 500 and the server recovers; a broken engine
makes /health 500; an unexpected exception in a handler is a 500 JSON body, never a
crash) and --chat-template overrides."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pagedllm.config import EngineArgs
from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.engine.core_client import ThreadedClient
from pagedllm.entrypoints.openai.api_server import build_app
from pagedllm.entrypoints.openai.serving_completion import OpenAIServingCompletion

JSON_HEADERS = {"Content-Type": "application/json"}
BODY = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0.0}


def threaded_engine(llm: Any) -> AsyncLLM:
    """An AsyncLLM over the shared LLM's engine core, run on a thread of this process."""
    engine = llm.llm_engine
    return AsyncLLM(
        engine.engine_config, engine.tokenizer, ThreadedClient(engine.engine_core), log_stats=False
    )


class Faults:
    """Switches on the real core: a failing model step, a broken scheduler."""

    def __init__(self, core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fail_steps = False
        real_execute = core.executor.execute_model

        def execute_model(scheduler_output: Any) -> Any:
            if self.fail_steps:
                raise RuntimeError("injected step failure")
            return real_execute(scheduler_output)

        monkeypatch.setattr(core.executor, "execute_model", execute_model)
        self.core = core
        self.monkeypatch = monkeypatch

    def break_scheduler(self) -> None:
        def schedule() -> Any:
            raise RuntimeError("injected scheduler failure")

        self.monkeypatch.setattr(self.core.scheduler, "schedule", schedule)


@pytest.fixture()
def flaky(smol_llm: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Faults, TestClient]]:
    core = smol_llm.llm_engine.engine_core
    faults = Faults(core, monkeypatch)
    app = build_app(EngineArgs(), engine=threaded_engine(smol_llm))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield faults, client
    monkeypatch.undo()
    core.abort_requests([r.request_id for r in (*core.scheduler.running, *core.scheduler.waiting)])
    assert not core.has_unfinished_requests()  # leave the shared engine clean


def test_failed_step_is_500_then_recovers(flaky: tuple[Faults, TestClient]) -> None:
    faults, client = flaky
    assert client.post("/v1/completions", json=BODY).status_code == 200
    faults.fail_steps = True
    for body in (BODY, {**BODY, "stream": True}):
        failed = client.post("/v1/completions", json=body)
        assert failed.status_code == 500
        assert "failed" in failed.json()["error"]["message"]
    faults.fail_steps = False
    assert client.get("/health").status_code == 200
    assert "Paris" in client.post("/v1/completions", json=BODY).json()["choices"][0]["text"]


def test_broken_engine_makes_health_fail(flaky: tuple[Faults, TestClient]) -> None:
    faults, client = flaky
    faults.break_scheduler()
    assert client.post("/v1/completions", json=BODY).status_code == 503
    health = client.get("/health")
    assert health.status_code == 503 and "dead" in health.json()["error"]["message"]
    assert client.post("/v1/completions", json=BODY).status_code == 503


def test_unexpected_handler_error_is_json_500(
    flaky: tuple[Faults, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = flaky

    async def explode(self: Any, request: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(OpenAIServingCompletion, "create_completion", explode)
    response = client.post("/v1/completions", json=BODY)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "InternalServerError"
    assert client.get("/health").status_code == 200


TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"


def test_chat_template_override(smol_llm: Any, tmp_path: Path) -> None:
    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE)
    app = build_app(EngineArgs(), chat_template=str(path), engine=threaded_engine(smol_llm))
    messages = [{"role": "user", "content": "你好"}]
    with TestClient(app) as client:
        tokens = client.post("/tokenize", json={"messages": messages}).json()["tokens"]
        text = client.post("/detokenize", json={"tokens": tokens}).json()["prompt"]
        assert text == "[user] 你好\n[assistant]"
        per_request = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
        body = {"messages": messages, "chat_template": per_request, "max_tokens": 2}
        chat = client.post("/v1/chat/completions", json=body).json()
        assert chat["usage"]["prompt_tokens"] == len(
            client.post("/tokenize", json={"prompt": "<你好>"}).json()["tokens"]
        )


def test_500_keeps_the_connection_and_is_logged_once(
    smol_llm: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Over a real uvicorn socket: the next request on the same keep-alive connection
    works, and the error is one log record (uvicorn logs nothing)."""
    import http.client
    import threading

    import uvicorn

    async def explode(self: Any, request: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(OpenAIServingCompletion, "create_completion", explode)
    app = build_app(EngineArgs(), engine=threaded_engine(smol_llm))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)  # logs reach caplog
    server = uvicorn.Server(config)
    logging.getLogger("pagedllm").addHandler(caplog.handler)  # it may not propagate
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/completions", body=json.dumps(BODY), headers=JSON_HEADERS)
        first = conn.getresponse()
        assert first.status == 500 and b"InternalServerError" in first.read()
        sock = conn.sock
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        assert conn.sock is sock and sock is not None  # the same connection
    finally:
        server.should_exit = True
        thread.join(30)
        logging.getLogger("pagedllm").removeHandler(caplog.handler)
    errors = list({id(r): r for r in caplog.records if r.levelname == "ERROR"}.values())
    assert len(errors) == 1 and "KeyError" in errors[0].getMessage()
    assert errors[0].getMessage().count("Traceback") == 1


def test_return_tokens_as_token_ids_flag(smol_llm: Any) -> None:
    """--return-tokens-as-token-ids: every request's logprobs tokens are "token_id:{id}"."""
    app = build_app(EngineArgs(), engine=threaded_engine(smol_llm), return_tokens_as_token_ids=True)
    with TestClient(app) as client:
        body = {**BODY, "logprobs": 1}
        tokens = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"][
            "tokens"
        ]
    assert len(tokens) == 4 and all(t.startswith("token_id:") for t in tokens)
