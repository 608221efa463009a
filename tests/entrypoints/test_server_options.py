"""vLLM's deployment flags on a real server: HTTPS (--ssl-keyfile/--ssl-certfile, a
throwaway CA from trustme) with the real openai client, --enable-request-id-headers,
--disable-fastapi-docs and --max-log-len; and a bad certificate stops the start with
one clear line before the model loads."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import requests
from remote_server import MODEL_NAME, PROMPT, SERVER_FLAGS, RemoteServer

trustme = pytest.importorskip("trustme")
OPENAI = "pagedllm.entrypoints.openai.api_server"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(folder / f"{name}.pem") for name in ("ca", "key", "cert")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.private_key_pem.write_to_path(paths["key"])
    with open(paths["cert"], "wb") as chain:
        for blob in cert.cert_chain_pems:
            chain.write(blob.bytes())
    return paths


@pytest.fixture(scope="module")
def tls_server(tls_files: dict[str, str]) -> Iterator[RemoteServer]:
    flags = ["--ssl-keyfile", tls_files["key"], "--ssl-certfile", tls_files["cert"]]
    flags += ["--enable-request-id-headers", "--disable-fastapi-docs", "--max-log-len", "5"]
    server = RemoteServer(OPENAI, [*SERVER_FLAGS, *flags], ca_path=tls_files["ca"])
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_https_with_the_openai_client(tls_server: RemoteServer, tls_files: dict[str, str]) -> None:
    assert tls_server.base_url.startswith("https://")
    client = openai.OpenAI(
        base_url=tls_server.url("/v1"),
        api_key="x",
        max_retries=0,
        http_client=httpx.Client(verify=ssl.create_default_context(cafile=tls_files["ca"])),
    )
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0)
    assert out.choices[0].text
    with pytest.raises(requests.exceptions.SSLError):  # not signed by a CA it trusts
        requests.get(tls_server.url("/health"), timeout=10, verify=True)
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP is not served
        requests.get(f"http://127.0.0.1:{tls_server.port}/health", timeout=10)


def test_request_id_headers_docs_and_log_length(tls_server: RemoteServer) -> None:
    verify = tls_server.verify
    mine = requests.get(tls_server.url("/health"), headers={"X-Request-Id": "abc-1"}, verify=verify)
    assert mine.headers["x-request-id"] == "abc-1"
    fresh = requests.post(tls_server.url("/v1/completions"), json={"max_tokens": 1}, verify=verify)
    assert fresh.status_code == 400 and re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert requests.get(tls_server.url(path), timeout=10, verify=verify).status_code == 404
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 2}
    assert requests.post(tls_server.url("/v1/completions"), json=body, verify=verify).ok
    assert f"prompt: {PROMPT[:5]!r} (" in tls_server.log_tail(200_000)


def test_a_bad_certificate_stops_the_start(tmp_path: Path) -> None:
    bogus = tmp_path / "cert.pem"
    bogus.write_text("not a certificate")
    started = subprocess.run(
        [sys.executable, "-m", OPENAI, "--port", "0", "--ssl-certfile", str(bogus)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 1
    assert "Could not start the server" in started.stderr + started.stdout
    assert "GGUF weights" not in started.stderr + started.stdout  # before the model loads
