"""The README's serving examples, run as written against the real servers (ports
8000, 8001 and 8002 in the text are the test servers' ports)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from remote_server import RemoteServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import readme_blocks  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "README.md"
PORTS = {"8000": "openai", "8001": "embed", "8002": "legacy"}


def code_blocks(language: str) -> list[str]:
    return readme_blocks.code_blocks(language, "Serving")


def localize(code: str, servers: dict[str, RemoteServer]) -> str:
    for port, name in PORTS.items():
        code = code.replace(f"http://localhost:{port}", servers[name].base_url)
    return code


def curl_commands() -> list[str]:
    commands = []
    for block in code_blocks("bash"):
        joined = block.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.startswith("curl ")]
    return commands


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_examples(servers: dict[str, RemoteServer]) -> None:
    commands = curl_commands()
    assert len(commands) == 6
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", localize(command, servers)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        if '"stream": true' in command:
            assert result.stdout.rstrip().endswith("data: [DONE]")
            assert '"role":"assistant"' in result.stdout
        else:
            body = json.loads(result.stdout)
            assert "error" not in body, body
        if "/v1/score" in command:  # Paris answers the question better than bananas
            assert body["data"][0]["score"] > body["data"][1]["score"]
        if "/v1/rerank" in command:
            assert [r["index"] for r in body["results"]] == [1]


def test_python_examples(
    servers: dict[str, RemoteServer], capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, Any] = {}
    for block in code_blocks("python"):
        exec(compile(localize(block, servers), str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "Paris" in out
    assert "2 384" in out  # two embeddings of all-MiniLM-L6-v2
    assert "The capital of France is" in out and "San Francisco is a" in out
