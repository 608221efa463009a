"""The OpenAI server runs its engine core in a child process: it is there in the
process tree; killed, it turns into errors (an SSE error event for the open stream,
503 on /health and for new requests), never a hang; and the server exits cleanly
after it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import requests
from remote_server import MODEL_NAME, SERVER_FLAGS, RemoteServer, child_pids

CORE_MODULE = b"pagedllm.core.engine_core_proc"


def core_pids(server_pid: int) -> list[int]:
    """The server's children that run the engine core."""
    return [
        pid
        for pid in child_pids(server_pid)
        if CORE_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_the_engine_core_is_a_child_process(server: RemoteServer) -> None:
    (core,) = core_pids(server.proc.pid)
    assert core != server.proc.pid
    body = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2, "temperature": 0.0}
    assert requests.post(server.url("/v1/completions"), json=body, timeout=60).ok
    assert core_pids(server.proc.pid) == [core]  # the same process serves every request


def test_a_killed_core_is_errors_not_a_hang() -> None:
    server = RemoteServer("pagedllm.entrypoints.openai.api_server", SERVER_FLAGS)
    try:
        server.wait_ready()
        (core,) = core_pids(server.proc.pid)
        body = {
            "model": MODEL_NAME,
            "prompt": "Tell me a long story.",
            "max_tokens": 1000,
            "ignore_eos": True,
            "stream": True,
        }
        with requests.post(
            server.url("/v1/completions"), json=body, stream=True, timeout=60
        ) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith(b"data: {")
            os.kill(core, signal.SIGKILL)
            rest = [line for line in lines if line]  # ends, within the read timeout
        errors = [json.loads(x[len(b"data: ") :]) for x in rest if b'"error"' in x]
        assert rest[-1] == b"data: [DONE]" and errors
        assert "engine" in errors[0]["error"]["message"].lower()
        health = requests.get(server.url("/health"), timeout=10)
        assert health.status_code == 503
        start = time.monotonic()
        refused = requests.post(
            server.url("/v1/completions"), json={**body, "stream": False}, timeout=30
        )
        assert refused.status_code == 503 and time.monotonic() - start < 5
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()


def test_the_core_and_the_server_freeze_their_start_up_heaps(server: RemoteServer) -> None:
    """Both processes move their start-up objects out of the collector's scans (a full
    collection of them paused serving for 60-150 ms)."""
    log = server.log_path.read_text(errors="replace")
    for process in ("engine core", "API server"):
        frozen = [line for line in log.splitlines() if f"{process}: " in line and "frozen" in line]
        assert frozen, f"no freeze logged by the {process}:\n{server.log_tail()}"
        assert int(frozen[0].split(f"{process}: ")[1].split()[0]) > 10_000
