"""`pagedllm serve --help` keeps every flag, default and choice it had when the engine
flags' help and choices moved from dictionaries in cli_args.py onto the EngineArgs fields
(config.engine_arg), and every flag has help text."""

from __future__ import annotations

import argparse

from pagedllm.entrypoints.cli import make_parser

# option strings -> (default, choices), taken from the parser before the move.
EXPECTED: dict[tuple[str, ...], tuple[object, tuple[object, ...] | None]] = {
    ("--host",): (None, None),
    ("--port",): (8000, None),
    ("--api-server-count", "-asc"): (1, None),
    ("--api-key",): (None, None),
    ("--max-request-body-size",): (33554432, None),
    ("--allowed-origins",): (["*"], None),
    ("--allowed-methods",): (["*"], None),
    ("--allowed-headers",): (["*"], None),
    ("--allow-credentials",): (False, None),
    ("--ssl-keyfile",): (None, None),
    ("--ssl-certfile",): (None, None),
    ("--ssl-ca-certs",): (None, None),
    ("--ssl-cert-reqs",): (0, (0, 1, 2)),
    ("--enable-request-id-headers",): (False, None),
    ("--shutdown-timeout",): (0.0, None),
    ("--chat-template",): (None, None),
    ("--chat-template-timeout",): (10.0, None),
    ("--chat-template-max-chars",): (67108864, None),
    ("--uvicorn-log-level",): ("info", ("debug", "info", "warning", "error", "critical", "trace")),
    ("--disable-log-requests",): (False, None),
    ("--max-log-len",): (200, None),
    ("--return-tokens-as-token-ids",): (False, None),
    ("--disable-fastapi-docs",): (False, None),
    ("--disable-uvicorn-access-log",): (False, None),
    ("--root-path",): (None, None),
    ("--disable-dashboard",): (False, None),
    ("--enable-auto-tool-choice",): (False, None),
    ("--tool-call-parser",): (None, ("hermes", "llama3_json", "mistral", "pythonic")),
    ("--model",): (None, None),
    ("--tokenizer",): (None, None),
    ("--tokenizer-mode",): ("auto", None),
    ("--skip-tokenizer-init",): (False, None),
    ("--trust-remote-code",): (False, None),
    ("--download-dir",): (None, None),
    ("--load-format",): ("auto", ("auto", "safetensors", "pt", "gguf", "dummy")),
    ("--dtype",): ("auto", ("auto", "float32", "float", "float16", "half", "bfloat16")),
    ("--kv-cache-dtype",): ("auto", ("auto",)),
    ("--seed",): (0, None),
    ("--max-model-len",): (None, None),
    ("--distributed-executor-backend",): (None, ("uni", "mp", "ray")),
    ("--pipeline-parallel-size", "-pp"): (1, None),
    ("--tensor-parallel-size", "-tp"): (1, None),
    ("--block-size",): (16, None),
    ("--enable-prefix-caching", "--no-enable-prefix-caching"): (True, None),
    ("--swap-space",): (4, None),
    ("--cpu-offload-gb",): (0, None),
    ("--gpu-memory-utilization",): (0.9, None),
    ("--num-gpu-blocks-override",): (None, None),
    ("--max-num-batched-tokens",): (None, None),
    ("--max-num-seqs",): (None, None),
    ("--max-logprobs",): (20, None),
    ("--disable-log-stats",): (False, None),
    ("--revision",): (None, None),
    ("--quantization", "-q"): (None, None),
    ("--enforce-eager",): (False, None),
    ("--max-seq-len-to-capture",): (8192, None),
    ("--disable-custom-all-reduce",): (False, None),
    ("--enable-chunked-prefill", "--no-enable-chunked-prefill"): (True, None),
    ("--served-model-name",): (None, None),
    ("--device",): ("auto", ("auto", "cpu", "cuda")),
    ("--runner",): ("auto", ("auto", "generate", "pooling")),
    ("--task",): ("auto", ("auto", "generate", "embed", "embedding")),
    ("--pooling-type",): (None, None),
    ("--pooling-normalize", "--no-pooling-normalize"): (None, None),
    ("--kv-cache-memory-bytes",): (None, None),
    ("--async-scheduling", "--no-async-scheduling"): (None, None),
    ("--preemption-mode",): (None, ("recompute", "swap")),
    ("--scheduling-policy",): ("fcfs", ("fcfs", "priority")),
    ("--generation-config",): ("auto", None),
    ("--override-generation-config",): (None, None),
    ("--structured-outputs-config",): (None, None),
    ("--model-impl",): ("auto", ("auto", "pagedllm", "vllm", "transformers")),
}


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def _flags() -> list[argparse.Action]:
    return [a for a in _serve_parser()._actions if a.option_strings and a.dest != "help"]


def test_serve_flags_defaults_and_choices_are_unchanged() -> None:
    got = {
        tuple(a.option_strings): (a.default, tuple(a.choices) if a.choices else None)
        for a in _flags()
    }
    assert got == EXPECTED


def test_every_serve_flag_has_help() -> None:
    missing = [a.option_strings[0] for a in _flags() if not (a.help or "").strip()]
    assert not missing, f"flags without help: {missing}"


def test_help_text_shows_help_defaults_and_aliases() -> None:
    text = " ".join(_serve_parser().format_help().split())  # argparse wraps lines
    assert "Fraction of GPU memory for weights, activations and KV cache. (default: 0.9)" in text
    assert "--tensor-parallel-size TENSOR_PARALLEL_SIZE, -tp TENSOR_PARALLEL_SIZE" in text
    assert "--tool-call-parser {hermes,llama3_json,mistral,pythonic}" in text
