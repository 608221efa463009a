"""Real servers for the entrypoint tests: subprocesses on free local ports with the
embedded SmolLM2-135M-Instruct (and all-MiniLM-L6-v2 for embeddings). The servers
(OpenAI, OpenAI with --api-key, legacy /generate, embeddings) start together, once per
session, the first time one is needed, and stop when the last test of this directory
is done (so the rest of the suite does not carry four idle servers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from remote_server import (
    API_KEY,
    CHAT_TEMPLATE_TIMEOUT_S,
    EMBED_FLAGS,
    EMBED_MODEL,
    SERVER_FLAGS,
    RemoteServer,
)

HERE = Path(__file__).resolve().parent
_RUNNING: list[RemoteServer] = []


def _stop_all() -> None:
    while _RUNNING:
        _RUNNING.pop().stop()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if nextitem is None or HERE not in Path(nextitem.path).resolve().parents:
        _stop_all()


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, RemoteServer]]:
    started = {
        "openai": RemoteServer(
            "pagedllm.entrypoints.openai.api_server",
            [*SERVER_FLAGS, "--chat-template-timeout", str(CHAT_TEMPLATE_TIMEOUT_S)],
        ),
        "auth": RemoteServer(
            "pagedllm.entrypoints.openai.api_server", [*SERVER_FLAGS, "--api-key", API_KEY]
        ),
        "legacy": RemoteServer("pagedllm.entrypoints.api_server", SERVER_FLAGS),
        "embed": RemoteServer("pagedllm.entrypoints.openai.api_server", EMBED_FLAGS),
    }
    _RUNNING.extend(started.values())
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        _stop_all()


@pytest.fixture(scope="session")
def server(servers: dict[str, RemoteServer]) -> RemoteServer:
    return servers["openai"]


@pytest.fixture(scope="session")
def auth_server(servers: dict[str, RemoteServer]) -> RemoteServer:
    return servers["auth"]


@pytest.fixture(scope="session")
def legacy_server(servers: dict[str, RemoteServer]) -> RemoteServer:
    return servers["legacy"]


@pytest.fixture(scope="session")
def client(server: RemoteServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def embed_client() -> Iterator[TestClient]:
    """The OpenAI app over the real all-MiniLM-L6-v2, in process (it loads in seconds)."""
    from pagedllm.config import EngineArgs
    from pagedllm.entrypoints.openai.api_server import build_app

    args = EngineArgs(
        model="sentence-transformers/all-MiniLM-L6-v2", kv_cache_memory_bytes=32 << 20
    )
    with TestClient(build_app(args, served_model_name=EMBED_MODEL)) as client:
        yield client
