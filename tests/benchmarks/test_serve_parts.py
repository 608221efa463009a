"""The parts of `pagedllm bench serve` without a server: flags, arrival times, the SSE
parsing of the client, the request body, and the metrics (vLLM's definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pagedllm.benchmarks import serve
from pagedllm.benchmarks.serve_client import (
    RequestFuncInput,
    RequestFuncOutput,
    _StreamState,
    request_payload,
)
from pagedllm.benchmarks.serve_metrics import calculate_metrics, format_report
from pagedllm.entrypoints.cli import BENCHMARKS


def test_registered_as_bench_serve() -> None:
    assert BENCHMARKS["serve"] == "pagedllm.benchmarks.serve"


def test_base_url_and_defaults() -> None:
    args = serve.parse_args([])
    assert serve.base_url(args) == "http://127.0.0.1:8000"
    assert args.endpoint == "/v1/completions" and args.seed == 0 and args.temperature == 1.0
    assert math.isinf(args.request_rate) and args.num_prompts == 1000
    assert (args.percentile_metrics, args.metric_percentiles) == ("ttft,tpot,itl", "50,90,99")
    args = serve.parse_args(["--host", "10.0.0.2", "--port", "9000"])
    assert serve.base_url(args) == "http://10.0.0.2:9000"
    args = serve.parse_args(["--base-url", "http://h:1/", "--port", "9000"])
    assert serve.base_url(args) == "http://h:1"  # --base-url wins
    assert math.isinf(serve.parse_args(["--request-rate", "inf"]).request_rate)
    assert serve.parse_args(["--request-rate", "20"]).request_rate == 20.0
    with pytest.raises(SystemExit):
        serve.parse_args(["--request-rate", "0"])
    with pytest.raises(SystemExit):
        serve.parse_args(["--num-prompts", "0"])


def test_arrival_offsets() -> None:
    assert serve.arrival_offsets(4, float("inf"), 1.0, 0) == [0.0] * 4
    offsets = serve.arrival_offsets(4000, 20.0, 1.0, seed=0)
    assert offsets[0] == 0.0 and offsets == sorted(offsets) and len(offsets) == 4000
    assert offsets == serve.arrival_offsets(4000, 20.0, 1.0, seed=0)
    assert offsets != serve.arrival_offsets(4000, 20.0, 1.0, seed=1)
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(1 / 20, rel=0.05)
    assert gaps.std() == pytest.approx(1 / 20, rel=0.1)  # exponential: std == mean
    bursty = np.diff(serve.arrival_offsets(4000, 20.0, 0.25, seed=0))
    assert bursty.mean() == pytest.approx(1 / 20, rel=0.1) and bursty.std() > 1.5 * gaps.std()


def _feed(state: _StreamState, events: list[bytes], times: list[float]) -> None:
    for event, now in zip(events, times):
        state.on_data(event, now)


def test_sse_parsing_counts_chunks_and_takes_usage() -> None:
    out = RequestFuncOutput(start_time=10.0)
    state = _StreamState(out)
    chunk = b'data: {"id":"x","choices":[{"index":0,"text":" t5"}],"usage":null}\n\n'
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}\n\n'
    _feed(state, [chunk, chunk + chunk, chunk, usage + b"data: [DONE]\n\n"], [10.5, 10.6, 10.9, 11])
    state.finish(11.0)
    assert out.success and out.output_tokens == 7  # the usage, not the 4 chunks
    assert out.ttft == pytest.approx(0.5) and out.latency == pytest.approx(1.0)
    assert out.itl == pytest.approx([0.1, 0.0, 0.3])  # one read holding two chunks: gap 0


def test_sse_parsing_without_usage_counts_chunks() -> None:
    out = RequestFuncOutput(start_time=0.0)
    state = _StreamState(out)
    chat = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": null}\n\n'
    _feed(state, [chat, chat, b"data: [DONE]\n\n"], [0.1, 0.2, 0.3])
    state.finish(0.3)
    assert out.success and out.output_tokens == 2 and out.itl == pytest.approx([0.1])


def test_sse_error_event_fails_the_request() -> None:
    out = RequestFuncOutput()
    state = _StreamState(out)
    state.on_data(b'data: {"error": {"message": "boom", "code": 500}}\n\n', 1.0)
    state.finish(1.0)
    assert not out.success and out.error == "boom"
    empty = RequestFuncOutput()
    state = _StreamState(empty)
    state.on_data(b"data: [DONE]\n\n", 1.0)
    state.finish(1.0)
    assert not empty.success and "without any content" in empty.error


def test_request_payload_is_plain_openai() -> None:
    inp = RequestFuncInput("t5 t6", "http://h/v1/completions", 2, 16, "m", temperature=1.0)
    body = request_payload(inp)
    assert body == {
        "model": "m",
        "prompt": "t5 t6",
        "max_tokens": 16,
        "temperature": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    inp.chat, inp.ignore_eos = True, True
    body = request_payload(inp)
    assert body["messages"] == [{"role": "user", "content": "t5 t6"}]
    assert body["max_completion_tokens"] == 16 and body["ignore_eos"] is True
    assert "prompt" not in body and "max_tokens" not in body


def _output(ttft: float, latency: float, tokens: int, itl: list[float]) -> RequestFuncOutput:
    return RequestFuncOutput(True, 10, tokens, ttft, latency, itl, start_time=0.0)


def test_metrics_follow_vllms_definitions() -> None:
    outputs = [
        _output(0.1, 1.1, 11, [0.1] * 10),  # tpot 0.1
        _output(0.3, 0.7, 3, [0.2, 0.2]),  # tpot 0.2
        _output(0.2, 0.2, 1, []),  # one token: no tpot
        RequestFuncOutput(False, 10, 0, error="HTTP 400"),
    ]
    r = calculate_metrics(outputs, 2.0, ["ttft", "tpot", "itl", "e2el"], [50, 99.9])
    assert (r["completed"], r["failed"]) == (3, 1)
    assert (r["total_input_tokens"], r["total_output_tokens"]) == (30, 15)
    assert r["request_throughput"] == 1.5 and r["output_throughput"] == 7.5
    assert r["total_token_throughput"] == 22.5
    assert r["mean_ttft_ms"] == pytest.approx(200) and r["median_ttft_ms"] == pytest.approx(200)
    assert r["mean_tpot_ms"] == pytest.approx(150)
    assert r["p50_itl_ms"] == pytest.approx(100) and r["p99.9_itl_ms"] == pytest.approx(200)
    assert r["mean_e2el_ms"] == pytest.approx(2000 / 3)
    report = format_report(r, ["ttft", "tpot", "itl", "e2el"], [50, 99.9])
    assert "Successful requests:                    3" in report
    assert "P99.9 ITL (ms):" in report and "Failed requests:" in report
    with pytest.raises(ValueError, match="unknown"):
        calculate_metrics(outputs, 1.0, ["ttfb"], [50])
