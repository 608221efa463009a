"""The shared request generator of the throughput workloads (../shared/BENCHMARKS.md)
and the model shapes they use, as dummy-weight model directories."""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any

SHAPES: dict[str, dict[str, object]] = {
    "qwen3-0.6b": dict(
        architectures=["Qwen3ForCausalLM"],
        model_type="qwen3",
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=40960,
        rope_theta=1000000,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    ),
    "llama-3.1-8b": dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    ),
    # Mixture-of-Experts (workload T3): 128 experts of 768, top 8 renormalized, every
    # layer sparse; about 30.5B parameters, 3.3B of them active per token.
    "qwen3-30b-a3b": dict(
        architectures=["Qwen3MoeForCausalLM"],
        model_type="qwen3_moe",
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=40960,
        rope_theta=1000000,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    ),
}

# name -> (shape, num_requests, (in_lo, in_hi), (out_lo, out_hi))
WORKLOADS: dict[str, tuple[str, int, tuple[int, int], tuple[int, int]]] = {
    "T1": ("qwen3-0.6b", 256, (100, 1024), (100, 1024)),
    "T2": ("llama-3.1-8b", 256, (100, 1024), (100, 1024)),
    "L1": ("llama-3.1-8b", 1, (128, 128), (512, 512)),
    "T3": ("qwen3-30b-a3b", 256, (100, 1024), (100, 1024)),  # the T1 requests
    "L3": ("qwen3-30b-a3b", 1, (128, 128), (512, 512)),
}


@dataclass
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int


def make_requests(
    num: int, in_range: tuple[int, int], out_range: tuple[int, int], seed: int = 0
) -> list[BenchRequest]:
    rng = random.Random(seed)
    requests = []
    for _ in range(num):
        prompt_len = rng.randint(*in_range)
        output_len = rng.randint(*out_range)
        ids = [rng.randint(0, 10000) for _ in range(prompt_len)]
        requests.append(BenchRequest(ids, output_len))
    return requests


def engine_kwargs(args: Any) -> dict[str, Any]:
    """The LLM(...) arguments every benchmark takes from its flags (one list, so that
    a flag a benchmark accepts is never dropped on the way to the engine)."""
    names = (
        "load_format",
        "dtype",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "disable_custom_all_reduce",
        "enforce_eager",
        "device",
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "gpu_memory_utilization",
        "quantization",
    )
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return {"skip_tokenizer_init": True, **kwargs}


def shape_dir(shape: str, max_position_embeddings: int | None = None) -> str:
    """A directory holding only config.json of the shape, for load_format='dummy'."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    config = dict(SHAPES[shape])
    if max_position_embeddings:
        config["max_position_embeddings"] = max_position_embeddings
    path = os.path.join(tempfile.mkdtemp(prefix="pagedllm-shape-"), shape)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


def publish_results(results: object, output_json: str | None) -> None:
    """Print one machine-readable `RESULT {json}` line per result (a dict, or each dict of
    a list) and write them all to `output_json` when given."""
    for r in results if isinstance(results, list) else [results]:
        print("RESULT " + json.dumps(r), flush=True)
    if output_json:
        with open(output_json, "w") as f:
            json.dump(results, f, indent=2)
