"""Soak (slow, run before closing issue 14): 500 concurrent completion streams on the
CPU with the embedded model, a fifth of them disconnecting at a random point and one
in ten a bad request. At the end nothing runs or waits, the KV cache is empty, the
server's RSS is back within 10% of where it was after a warm-up, and every stream we
kept ended with a finish_reason and [DONE].

    pytest -m slow tests/entrypoints/test_soak.py -s
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
import pytest
import requests
from remote_server import MODEL_NAME, SERVER_FLAGS, RemoteServer, child_pids, metric_samples

NUM_STREAMS = 500
BAD_BODIES: list[dict[str, Any]] = [
    {"seed": 2**70},
    {"n": 0},
    {"bad_words": [1, 2]},
    {"min_p": 3},
    {"prompt_logprobs": -1},
    {"logprobs": 99},
    {"temperature": "hot"},
    {"max_tokens": 10**9},
]

pytestmark = pytest.mark.slow


def tree_rss_kib(pid: int) -> int:
    """The server's RSS plus its children's (the engine core runs in a child process)."""
    return rss_kib(pid) + sum(rss_kib(c) for c in child_pids(pid))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one_stream(client: httpx.AsyncClient, i: int, rng: random.Random) -> str:
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "prompt": f"Story {i}: once upon a time",
        "max_tokens": rng.randint(2, 8),
        "temperature": 0.8,
        "stream": True,
    }
    if rng.random() < 0.1:
        body.update(rng.choice(BAD_BODIES))
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 400, response.text
        return "bad"
    disconnect_after = rng.randint(1, 4) if rng.random() < 0.2 else None
    finish, done, chunks = None, False, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunks += 1
            for choice in json.loads(line[6:])["choices"]:
                finish = choice.get("finish_reason") or finish
            if disconnect_after is not None and chunks >= disconnect_after:
                return "disconnected"  # leaving the block closes the connection
    assert done and finish in ("length", "stop"), (done, finish)
    return "complete"


async def run_all(base_url: str) -> dict[str, int]:
    rng = random.Random(14)
    limits = httpx.Limits(max_connections=NUM_STREAMS, max_keepalive_connections=NUM_STREAMS)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=600) as client:
        results = await asyncio.gather(*(one_stream(client, i, rng) for i in range(NUM_STREAMS)))
    return {kind: results.count(kind) for kind in ("complete", "disconnected", "bad")}


def wait_idle(server: RemoteServer, timeout_s: float = 60) -> dict[str, float]:
    names = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
    deadline = time.monotonic() + timeout_s
    while True:
        samples = metric_samples(server)
        gauges = {name: samples[(f"pagedllm:{name}", ())] for name in names}
        if not any(gauges.values()) or time.monotonic() > deadline:
            return gauges
        time.sleep(0.5)


def test_soak_500_streams_with_disconnects_and_bad_requests() -> None:
    server = RemoteServer("pagedllm.entrypoints.openai.api_server", SERVER_FLAGS)
    try:
        server.wait_ready()
        asyncio.run(run_all(server.base_url))  # warm-up: allocator pools, first shapes
        wait_idle(server)
        rss_start = tree_rss_kib(server.proc.pid)
        started = time.monotonic()
        counts = asyncio.run(run_all(server.base_url))
        elapsed = time.monotonic() - started
        gauges = wait_idle(server)
        rss_end = tree_rss_kib(server.proc.pid)
        print(
            f"\nsoak: {counts} in {elapsed:.1f} s; gauges {gauges}; "
            f"RSS {rss_start / 1024:.0f} -> {rss_end / 1024:.0f} MiB"
        )
        assert gauges == dict.fromkeys(gauges, 0.0)
        assert abs(rss_end - rss_start) <= 0.1 * rss_start
        assert counts["complete"] + counts["disconnected"] + counts["bad"] == NUM_STREAMS
        assert counts["disconnected"] > 50 and counts["bad"] > 20
        assert requests.get(server.url("/health"), timeout=10).status_code == 200
    finally:
        server.stop()
