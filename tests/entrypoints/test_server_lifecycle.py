"""Start-up and shutdown of real servers (each test owns its server): a port in use
and corrupt model files are one clear line before anything loads; SIGTERM/SIGINT end
the streams with an error event on the --shutdown-timeout deadline and exit cleanly;
the legacy /generate server takes the API key from the environment and CORS flags."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from remote_server import MODEL_NAME, SERVER_FLAGS, RemoteServer, free_port

from pagedllm.model_loader.resolve import resolve_model
from pagedllm.model_loader.tokenizer import get_tokenizer

OPENAI = "pagedllm.entrypoints.openai.api_server"
LEGACY = "pagedllm.entrypoints.api_server"
LONG = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0.0}


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", OPENAI, "--host", "127.0.0.1", *args]
    env = {**os.environ, "PAGEDLLM_LOGGING_LEVEL": "INFO"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_port_in_use_is_reported_before_the_model_loads() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # A model that does not exist: loading it first would report that instead.
        done = _run(["--port", str(port), "--model", "/nonexistent/model"])
    assert done.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and "not found locally" not in done.stderr


def _hf_dir_with_tokenizer(path: Path) -> Path:
    from transformers import LlamaConfig

    path.mkdir()
    LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    ).save_pretrained(path)
    get_tokenizer(resolve_model(None).tokenizer_path).save_pretrained(path)
    return path


def _truncated_gguf(tmp: Path) -> tuple[str, str]:
    target = tmp / "truncated.gguf"
    target.write_bytes(Path(resolve_model(None).path).read_bytes()[: 2 * 2**20])
    return str(target), str(target)


def _random_safetensors(tmp: Path) -> tuple[str, str]:
    model = _hf_dir_with_tokenizer(tmp / "random-weights")
    (model / "model.safetensors").write_bytes(os.urandom(100_000))
    return str(model), str(model / "model.safetensors")


def _broken_config(tmp: Path) -> tuple[str, str]:
    model = _hf_dir_with_tokenizer(tmp / "broken-config")
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64')
    (model / "model.safetensors").write_bytes(b"")
    return str(model), str(model / "config.json")


@pytest.mark.parametrize("make", [_truncated_gguf, _random_safetensors, _broken_config])
def test_corrupt_model_files_are_one_clear_line(make: object, tmp_path: Path) -> None:
    model, named_file = make(tmp_path)  # type: ignore[operator]
    done = _run(["--port", str(free_port()), "--model", model, "--max-model-len", "256"])
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert named_file in errors[0]
    assert "Traceback" not in done.stderr


def _stream_lines(server: RemoteServer, path: str, body: dict[str, object], out: list[str]) -> None:
    with requests.post(server.url(path), json=body, stream=True, timeout=300) as response:
        for line in response.iter_lines(decode_unicode=True):
            if line:
                out.append(line)


def _start_stream(
    server: RemoteServer, path: str, body: dict[str, object]
) -> tuple[threading.Thread, list[str]]:
    lines: list[str] = []
    thread = threading.Thread(target=_stream_lines, args=(server, path, body, lines), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while len(lines) < 2 and time.monotonic() < deadline:  # generating
        time.sleep(0.1)
    assert len(lines) >= 2, server.log_tail()
    return thread, lines


def _exit_code(server: RemoteServer, timeout: float) -> int:
    return server.proc.wait(timeout=timeout)


def test_sigterm_ends_open_streams_with_an_error_event() -> None:
    server = RemoteServer(OPENAI, SERVER_FLAGS)  # --shutdown-timeout 0: abort at once
    try:
        server.wait_ready()
        body = {"model": MODEL_NAME, "prompt": "Once upon a time", "stream": True, **LONG}
        thread, lines = _start_stream(server, "/v1/completions", body)
        server.proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert not thread.is_alive()
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["code"] == 503 and "shutting down" in error["message"]
        assert _exit_code(server, 30) == 0
        log = server.log_path.read_text()
        assert "terminate called" not in log and "Traceback" not in log
    finally:
        server.stop()


def test_shutdown_timeout_lets_short_requests_finish_and_a_second_sigint_stops_now() -> None:
    key = "legacy-secret"
    server = RemoteServer(
        LEGACY,
        [*SERVER_FLAGS, "--shutdown-timeout", "120", "--allowed-origins", '["http://a.example"]'],
        env={"VLLM_API_KEY": key},
    )
    auth = {"Authorization": f"Bearer {key}"}
    try:
        server.wait_ready()
        # --api-key from the environment guards /generate; /health stays open.
        assert (
            requests.post(server.url("/generate"), json={"prompt": "hi"}, timeout=30).status_code
            == 401
        )
        ok = requests.post(
            server.url("/generate"),
            json={"prompt": "hi", "max_tokens": 2},
            headers=auth,
            timeout=60,
        )
        assert ok.status_code == 200 and len(ok.json()["text"]) == 1
        preflight = requests.options(
            server.url("/generate"),
            headers={"Origin": "http://a.example", "Access-Control-Request-Method": "POST"},
            timeout=10,
        )
        assert preflight.headers["access-control-allow-origin"] == "http://a.example"
        long_body = {"prompt": "Once upon a time", "stream": True, **LONG}
        lines: list[str] = []
        long_thread = threading.Thread(
            target=lambda: _stream_auth(server, long_body, auth, lines), daemon=True
        )
        long_thread.start()
        short = {
            "prompt": "The capital of France is",
            "stream": True,
            "max_tokens": 24,
            "ignore_eos": True,
        }
        short_lines: list[str] = []
        short_thread = threading.Thread(
            target=lambda: _stream_auth(server, short, auth, short_lines), daemon=True
        )
        short_thread.start()
        time.sleep(2.0)
        server.proc.send_signal(signal.SIGINT)
        short_thread.join(120)
        assert short_lines and "error" not in short_lines[-1]  # finished normally
        assert long_thread.is_alive()
        refused = _try_post(server, auth)
        assert refused in (503, None)  # shutting down: 503, or no longer listening
        server.proc.send_signal(signal.SIGINT)
        long_thread.join(30)
        assert not long_thread.is_alive()
        assert "shutting down" in json.loads(lines[-1])["error"]["message"]
        assert _exit_code(server, 30) == 0
        assert "terminate called" not in server.log_path.read_text()
    finally:
        server.stop()


def _stream_auth(
    server: RemoteServer, body: dict[str, object], headers: dict[str, str], out: list[str]
) -> None:
    with requests.post(
        server.url("/generate"), json=body, headers=headers, stream=True, timeout=300
    ) as r:
        for line in r.iter_lines():
            if line:
                out.append(line.decode("utf-8"))


def _try_post(server: RemoteServer, headers: dict[str, str]) -> int | None:
    try:
        body = {"prompt": "hi", "max_tokens": 2}
        return requests.post(
            server.url("/generate"), json=body, headers=headers, timeout=30
        ).status_code
    except requests.ConnectionError:
        return None
