"""`pagedllm bench serve` end to end against a real pagedllm server on the CPU: a
2-layer model of the S1 kind (dummy weights, word-level tokenizer), requests at rate
inf and at a finite rate, on /v1/completions and /v1/chat/completions, the JSON result's counts and latency orderings, and failed
requests counted with their first error printed."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
from remote_server import RemoteServer  # noqa: E402

from pagedllm.benchmarks import serve  # noqa: E402
from pagedllm.benchmarks.serve_dataset import sample_random_requests  # noqa: E402
from pagedllm.benchmarks.word_model import write_word_model  # noqa: E402

MAX_MODEL_LEN = 256
TINY = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, torch_dtype="float32",
)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_word_model(str(tmp_path_factory.mktemp("s1-tiny") / "model"), **TINY)


@pytest.fixture(scope="module")
def server(model_dir: str) -> Iterator[RemoteServer]:
    flags = ["--model", model_dir, "--load-format", "dummy", "--max-model-len", str(MAX_MODEL_LEN)]
    flags += ["--kv-cache-memory-bytes", "32M", "--disable-log-requests"]
    flags += ["--disable-uvicorn-access-log"]
    remote = RemoteServer("pagedllm.entrypoints.openai.api_server", flags)
    try:
        remote.wait_ready()
        yield remote
    finally:
        remote.stop()


def _bench(tmp_path: Path, name: str, *flags: str) -> dict[str, Any]:
    base = ["--num-prompts", "6", "--random-input-len", "16", "--random-output-len", "4"]
    base += ["--ignore-eos", "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el"]
    base += ["--save-result", "--result-dir", str(tmp_path), "--result-filename", name]
    returned = serve.main([*base, *flags])
    saved: dict[str, Any] = json.loads((tmp_path / name).read_text())
    assert saved["completed"] == returned["completed"]
    return saved


def _check_latencies(r: dict[str, Any]) -> None:
    for name in ("ttft", "tpot", "itl", "e2el"):
        p50, p90, p99 = (r[f"p{p}_{name}_ms"] for p in (50, 90, 99))
        assert 0 < p50 <= p90 <= p99, name
        assert r[f"median_{name}_ms"] == p50 and r[f"mean_{name}_ms"] > 0
    assert r["mean_ttft_ms"] < r["mean_e2el_ms"]
    assert all(t > 0 for t in r["ttfts"]) and all(g >= 0 for gaps in r["itls"] for g in gaps)


def test_rate_inf(server: RemoteServer, model_dir: str, tmp_path: Path) -> None:
    r = _bench(tmp_path, "inf.json", "--base-url", server.base_url)
    assert r["model_id"] == model_dir  # the first id of GET /v1/models
    assert (r["completed"], r["failed"], r["request_rate"]) == (6, 0, "inf")
    assert r["total_input_tokens"] == 6 * 16 and r["total_output_tokens"] == 6 * 4
    assert r["output_lens"] == [4] * 6 and r["errors"] == [""] * 6
    assert r["request_throughput"] == pytest.approx(6 / r["duration"])
    assert r["output_throughput"] == pytest.approx(24 / r["duration"])
    assert r["max_concurrent_requests"] == 6  # all at once
    _check_latencies(r)


def test_finite_rate_and_max_concurrency(server: RemoteServer, tmp_path: Path) -> None:
    flags = ["--host", "127.0.0.1", "--port", str(server.port), "--request-rate", "30"]
    r = _bench(tmp_path, "rate.json", *flags, "--max-concurrency", "2", "--seed", "3")
    assert (r["completed"], r["failed"], r["request_rate"]) == (6, 0, 30.0)
    assert r["max_concurrent_requests"] <= 2 and r["max_concurrency"] == 2
    assert r["duration"] >= serve.arrival_offsets(6, 30.0, 1.0, 3)[-1]
    _check_latencies(r)


def test_chat_endpoint(server: RemoteServer, tmp_path: Path) -> None:
    flags = ["--base-url", server.base_url, "--endpoint", "/v1/chat/completions"]
    r = _bench(tmp_path, "chat.json", *flags)
    assert (r["completed"], r["failed"], r["endpoint_type"]) == (6, 0, "openai-chat")
    assert r["output_lens"] == [4] * 6
    _check_latencies(r)


def test_server_counts_n_words_as_n_tokens(server: RemoteServer, model_dir: str) -> None:
    prompt = sample_random_requests(AutoTokenizer.from_pretrained(model_dir), 1, 16, 1)[0]
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)
    out = client.completions.create(model=model_dir, prompt=prompt.prompt, max_tokens=2)
    assert out.usage is not None and out.usage.prompt_tokens == 16
    messages: Any = [{"role": "user", "content": prompt.prompt}]
    chat = client.chat.completions.create(model=model_dir, messages=messages, max_tokens=2)
    assert chat.usage is not None and chat.usage.prompt_tokens == 16


def _seed_with_some_too_long(tokenizer: Any) -> tuple[int, int]:
    """A seed whose first request fits the context (the initial test request must
    pass) and some later ones do not; and how many do not."""
    for seed in range(100):
        reqs = sample_random_requests(tokenizer, 6, 200, 4, range_ratio=0.5, seed=seed)
        too_long = sum(r.prompt_len + 4 > MAX_MODEL_LEN for r in reqs)
        if reqs[0].prompt_len + 4 <= MAX_MODEL_LEN and too_long:
            return seed, too_long
    raise AssertionError("no such seed")


def test_failed_requests_are_counted(
    server: RemoteServer, model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed, too_long = _seed_with_some_too_long(AutoTokenizer.from_pretrained(model_dir))
    flags = ["--base-url", server.base_url, "--random-input-len", "200"]
    r = _bench(tmp_path, "f.json", *flags, "--random-range-ratio", "0.5", "--seed", str(seed))
    assert (r["completed"], r["failed"]) == (6 - too_long, too_long)
    assert sum(1 for e in r["errors"] if e.startswith("HTTP 400")) == too_long
    assert f"{too_long} requests failed; the first error: HTTP 400" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="initial test request failed: HTTP 400"):
        serve.main(["--base-url", server.base_url, "--random-input-len", "300", "--disable-tqdm"])
