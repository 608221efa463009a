"""A real server in a subprocess on a free local port (conftest.py starts them), and
small client helpers shared by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import requests
from prometheus_client.parser import text_string_to_metric_families

MODEL_NAME = "SmolLM2-135M-Instruct"  # the served name of the embedded default model
EMBED_MODEL = "all-MiniLM-L6-v2"  # the served name of conftest's in-process embed_client
API_KEY = "test-secret-key"
# Small context and KV budget: fast start, 2 CPU cores.
SERVER_FLAGS = [
    "--max-model-len",
    "2048",
    "--kv-cache-memory-bytes",
    "256M",
    "--disable-uvicorn-access-log",
]
EMBED_FLAGS = [
    "--model",
    "sentence-transformers/all-MiniLM-L6-v2",
    "--kv-cache-memory-bytes",
    "32M",
    "--disable-uvicorn-access-log",
]
STARTUP_TIMEOUT_S = 420.0
CHAT_TEMPLATE_TIMEOUT_S = 3.0  # the shared OpenAI server's --chat-template-timeout


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the server's engine core, for one)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid:
            children.append(int(entry))
    return children


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RemoteServer:
    """`python -m <module> --host 127.0.0.1 --port <free> <args>`, logging to a file."""

    def __init__(
        self,
        module: str,
        args: list[str],
        env: dict[str, str] | None = None,
        new_session: bool = False,  # its own process group (a Ctrl-C test signals the group)
        ca_path: str | None = None,  # HTTPS (the server has --ssl-*), verified with this CA
    ) -> None:
        self.port = free_port()
        self.scheme = "https" if ca_path else "http"
        self.verify: str | bool = ca_path or True
        self.log_path = Path(tempfile.mkstemp(prefix="pagedllm-server-", suffix=".log")[1])
        cmd = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port), *args]
        full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=new_session,
            )

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def log_tail(self, num_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                health = requests.get(self.url("/health"), timeout=2, verify=self.verify)
                if health.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server did not become healthy:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_path.unlink(missing_ok=True)


PROMPT = "The capital of France is"


def complete(client: openai.OpenAI, prompt: Any, **kwargs: Any) -> Any:
    args = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 6, "temperature": 0.0, **kwargs}
    return client.completions.create(**args)


def metric_samples(server: RemoteServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(server.url("/metrics"), timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model_name"))
            samples[(sample.name, labels)] = sample.value
    return samples
