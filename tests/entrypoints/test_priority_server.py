"""`--scheduling-policy priority` on a real server with the real openai client: with
one request running at a time, a later request with a lower `priority` value
(extra_body, as vLLM takes it) overtakes an earlier waiting one, and both get the
same greedy text as without priorities."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import openai
import pytest
from remote_server import MODEL_NAME, SERVER_FLAGS, RemoteServer, metric_samples

WAITING = ("pagedllm:num_requests_waiting", ())


@pytest.fixture(scope="module")
def priority_server() -> Iterator[RemoteServer]:
    server = RemoteServer(
        "pagedllm.entrypoints.openai.api_server",
        [*SERVER_FLAGS, "--scheduling-policy", "priority", "--max-num-seqs", "1"],
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def wait_for_waiting(server: RemoteServer, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while metric_samples(server).get(WAITING) != count:
        assert time.monotonic() < deadline, f"never {count} waiting requests"
        time.sleep(0.05)


def completion(client: openai.OpenAI, prompt: str, priority: int) -> tuple[str, float]:
    out = client.completions.create(
        model=MODEL_NAME,
        prompt=prompt,
        max_tokens=4,
        temperature=0.0,
        extra_body={"priority": priority},
    )
    return out.choices[0].text, time.monotonic()


def test_a_lower_priority_value_overtakes_an_earlier_request(
    priority_server: RemoteServer,
) -> None:
    client = openai.OpenAI(base_url=priority_server.url("/v1"), api_key="x", max_retries=0)
    alone = {p: completion(client, p, 0)[0] for p in ("Blue is a", "Red is a")}
    running = client.completions.create(
        model=MODEL_NAME,
        prompt="Count to one hundred:",
        max_tokens=400,
        temperature=0.0,
        stream=True,
        extra_body={"ignore_eos": True, "priority": 3},
    )
    next(iter(running))  # the long request holds the only running slot
    with ThreadPoolExecutor(2) as pool:
        early: Future[Any] = pool.submit(completion, client, "Blue is a", 5)
        wait_for_waiting(priority_server, 1)
        late: Future[Any] = pool.submit(completion, client, "Red is a", -1)
        wait_for_waiting(priority_server, 2)
        for _ in running:  # the long request finishes; the queue is then served
            pass
        (early_text, early_done), (late_text, late_done) = early.result(), late.result()
    assert late_done < early_done  # priority -1 ran before priority 5, which came first
    assert (early_text, late_text) == (alone["Blue is a"], alone["Red is a"])
