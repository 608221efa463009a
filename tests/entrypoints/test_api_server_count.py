"""`--api-server-count 2`: two API-server processes on one port, one engine core.
Real servers and the real openai client: concurrent completions and chats get the
same greedy text as one server, both servers take requests, /metrics sums the
servers without counting the engine twice, /health, /v1/models and the dashboard
answer, a disconnected stream is freed in the core, and Ctrl-C (SIGINT to the
process group), or the parent's death, leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
from remote_server import MODEL_NAME, SERVER_FLAGS, RemoteServer, child_pids, metric_samples

OPENAI = "pagedllm.entrypoints.openai.api_server"
PROMPTS = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(6)]
CHATS = [f"Name a color that starts with the letter {c}." for c in "BGRY"]
RUNNING = ("pagedllm:num_requests_running", ())


def _pids_tree(pid: int) -> list[int]:
    """`pid`'s children and their children (the core's executor has none on the CPU)."""
    pids = child_pids(pid)
    return pids + [g for p in pids for g in child_pids(p)]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RemoteServer, RemoteServer]]:
    multi = RemoteServer(OPENAI, [*SERVER_FLAGS, "--api-server-count", "2"], new_session=True)
    single = RemoteServer(OPENAI, SERVER_FLAGS)
    try:
        multi.wait_ready()
        single.wait_ready()
        yield multi, single
    finally:
        multi.stop()
        single.stop()


def _client(server: RemoteServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)


def _ask(server: RemoteServer, kind: str, text: str) -> str:
    client = _client(server)
    if kind == "chat":
        reply = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": text}],
            max_tokens=8,
            temperature=0.0,
        )
        return reply.choices[0].message.content or ""
    if kind == "stream":
        chunks = client.completions.create(
            model=MODEL_NAME, prompt=text, max_tokens=8, temperature=0.0, stream=True
        )
        return "".join(c.choices[0].text for c in chunks if c.choices)
    return (
        client.completions.create(model=MODEL_NAME, prompt=text, max_tokens=8, temperature=0.0)
        .choices[0]
        .text
    )


def _all(server: RemoteServer) -> list[str]:
    jobs = [("complete", p) for p in PROMPTS[:3]] + [("stream", p) for p in PROMPTS[3:]]
    jobs += [("chat", c) for c in CHATS]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: _ask(server, *job), jobs))


def _requests_per_server(server: RemoteServer) -> list[int]:
    log = server.log_path.read_text(errors="replace")
    return [len(re.findall(rf"\[api server {i}\].*Received request", log)) for i in range(2)]


def test_one_core_two_api_servers_in_the_process_tree(
    servers: tuple[RemoteServer, RemoteServer],
) -> None:
    multi, _ = servers
    commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in child_pids(multi.proc.pid)]
    assert sum(b"pagedllm.core.engine_core_proc" in c for c in commands) == 1
    assert sum(b"api_server_worker" in c for c in commands) == 2


def test_same_greedy_outputs_as_one_server_from_both_servers(
    servers: tuple[RemoteServer, RemoteServer],
) -> None:
    multi, single = servers
    expected = _all(single)
    assert sum(bool(text) for text in expected) >= len(expected) // 2
    for _ in range(5):  # which server accepts a connection is up to the kernel
        assert _all(multi) == expected
        if min(_requests_per_server(multi)) > 0:
            break
    assert min(_requests_per_server(multi)) > 0, _requests_per_server(multi)


def _finished(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(
        samples.get(("pagedllm:request_success_total", (("finished_reason", r),)), 0.0)
        for r in ("stop", "length")
    )


def test_metrics_sum_the_servers_and_count_the_engine_once(
    servers: tuple[RemoteServer, RemoteServer],
) -> None:
    multi, _ = servers
    before = metric_samples(multi)
    ttft = ("pagedllm:time_to_first_token_seconds_count", ())
    sent = len(PROMPTS) + len(CHATS)
    _all(multi)
    for _ in range(20):  # engine-wide series: server 0 publishes them from the core's stats
        after = metric_samples(multi)
        if _finished(after) - _finished(before) >= sent:
            break
        time.sleep(0.25)
    assert after[ttft] - before[ttft] == sent  # each server's own requests, summed
    assert _finished(after) - _finished(before) == sent  # the core's count, once
    assert metric_samples(multi)[ttft] == after[ttft]  # the same whichever server answers


def test_health_models_and_dashboard(servers: tuple[RemoteServer, RemoteServer]) -> None:
    multi, _ = servers
    for _ in range(4):
        assert requests.get(multi.url("/health"), timeout=10).status_code == 200
        models = requests.get(multi.url("/v1/models"), timeout=10).json()
        assert [m["id"] for m in models["data"]] == [MODEL_NAME]
        snapshot = requests.get(multi.url("/dashboard/snapshot"), timeout=30)
        assert snapshot.status_code == 200 and snapshot.json()


def _wait_running(server: RemoteServer, count: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while metric_samples(server)[RUNNING] != count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_disconnected_stream_is_freed_in_the_core(
    servers: tuple[RemoteServer, RemoteServer],
) -> None:
    multi, _ = servers
    aborts = ("pagedllm:request_success_total", (("finished_reason", "abort"),))
    before = metric_samples(multi).get(aborts, 0.0)
    body = {
        "model": MODEL_NAME,
        "prompt": "Tell me a long story.",
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with requests.post(multi.url("/v1/completions"), json=body, stream=True, timeout=60) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line).startswith(b"data: {")
        assert _wait_running(multi, 1)  # in the core (server 0 publishes the gauge)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        samples = metric_samples(multi)
        if samples[RUNNING] == 0 and samples.get(aborts, 0.0) == before + 1:
            break
        time.sleep(0.25)
    assert samples[RUNNING] == 0 and samples.get(aborts, 0.0) == before + 1


def test_ctrl_c_stops_every_process(servers: tuple[RemoteServer, RemoteServer]) -> None:
    multi, _ = servers
    tree = [multi.proc.pid, *_pids_tree(multi.proc.pid)]
    assert len(tree) == 4  # parent, core, two servers
    os.killpg(multi.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert multi.proc.wait(timeout=60) == 0
    assert _wait_gone(tree, 30) == []
    log = multi.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Fatal Python error" not in log


def test_a_killed_parent_leaves_no_orphans() -> None:
    server = RemoteServer(OPENAI, [*SERVER_FLAGS, "--api-server-count", "2"])
    try:
        server.wait_ready()
        children = _pids_tree(server.proc.pid)
        assert len(children) == 3
        server.proc.kill()
        server.proc.wait()
        assert _wait_gone(children, 60) == []
    finally:
        server.stop()


def test_the_flag_takes_vllm_names_and_refuses_zero(capsys: pytest.CaptureFixture[str]) -> None:
    from pagedllm.entrypoints.cli_args import make_server_parser

    parser = make_server_parser()
    assert parser.parse_args([]).api_server_count == 1
    assert parser.parse_args(["--api-server-count", "3"]).api_server_count == 3
    assert parser.parse_args(["-asc", "2"]).api_server_count == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--api-server-count", "0"])
    assert "must be at least 1" in capsys.readouterr().err
