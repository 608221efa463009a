"""A bounded fuzz test of the live OpenAI server from its own OpenAPI schema
(schemathesis + hypothesis, fixed seed): valid and invalid bodies for completions,
chat, /tokenize and /detokenize. No case may get a 5xx, /health must answer 200
after every case, and at the end nothing runs and the KV cache is empty.

Costs are bounded by rewriting each generated body (max_tokens <= 4, n <= 2, at most
4 prompts), so a few hundred cases take about a minute on 2 CPU cores."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from remote_server import RemoteServer, metric_samples

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

ENDPOINTS = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]
CASES_PER_ENDPOINT = 40  # positive + negative generation: 2 x 40 x 4 = 320 cases


def bound_cost(case: Any) -> Any:
    """Keep the fuzzed values of the costly fields small (their validation is still
    exercised: negative values and wrong types pass through unchanged)."""
    body = case.body
    if not isinstance(body, dict):
        return case
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int) and body[name] > 4:
            body[name] = 4
    for name in ("n", "best_of"):
        if isinstance(body.get(name), int) and body[name] > 2:
            body[name] = 2
    if body.get("max_tokens") is None and "messages" in body:
        body["max_tokens"] = 4  # chat's default is the rest of the context
    if body.get("min_tokens", 0) is not None and isinstance(body.get("min_tokens"), int):
        body["min_tokens"] = min(body["min_tokens"], 4)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        body["prompt"] = prompt[:4]
    return case


def run_endpoint(server: RemoteServer, schema: Any, path: str, failures: list[str]) -> int:
    from hypothesis import HealthCheck, Phase, given, settings

    operation = schema[path]["POST"]
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    strategy = operation.as_strategy(generation_mode=modes[0]) | operation.as_strategy(
        generation_mode=modes[1]
    )
    count = 0

    @settings(
        max_examples=CASES_PER_ENDPOINT * 2,
        deadline=None,
        derandomize=True,  # a fixed seed: the same cases every run
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy.map(bound_cost))
    def one_case(case: Any) -> None:
        nonlocal count
        count += 1
        response = case.call(base_url=server.base_url, timeout=60)
        if response.status_code >= 500:
            failures.append(f"{path} {response.status_code}: {case.body!r} -> {response.text}")
        health = requests.get(server.url("/health"), timeout=30)
        assert health.status_code == 200, f"/health {health.status_code} after {case.body!r}"

    one_case()
    return count


def test_fuzz_the_openapi_schema(server: RemoteServer) -> None:
    schema = schemathesis.openapi.from_url(server.url("/openapi.json"))
    failures: list[str] = []
    counts = {path: run_endpoint(server, schema, path, failures) for path in ENDPOINTS}
    assert not failures, "\n".join(failures[:20])
    assert sum(counts.values()) >= 300, counts
    samples = metric_samples(server)
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert samples[(f"pagedllm:{gauge}", ())] == 0.0, gauge
