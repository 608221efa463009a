"""Workload T3's shape (Qwen3-30B-A3B) is a valid HF qwen3_moe config, and its dummy-
weight directory runs through pagedllm on the CPU when shrunk (fewer layers, experts,
and a smaller vocab; the per-layer shapes kept but the expert width)."""

from __future__ import annotations

import json
import os

from pagedllm.benchmarks.workload import SHAPES, WORKLOADS, shape_dir


def test_t3_is_the_t1_requests_on_the_qwen3_30b_a3b_shape() -> None:
    from transformers import AutoConfig

    assert WORKLOADS["T3"][1:] == WORKLOADS["T1"][1:]
    shape = dict(SHAPES[WORKLOADS["T3"][0]])
    kwargs = {k: v for k, v in shape.items() if k not in ("architectures", "model_type")}
    config = AutoConfig.for_model(str(shape["model_type"]), **kwargs)
    assert (config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size) == (
        128,
        8,
        768,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (32, 4, 128)


def test_shrunk_t3_shape_generates_on_cpu() -> None:
    from pagedllm import LLM, SamplingParams

    path = shape_dir("qwen3-30b-a3b")
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config.update(num_hidden_layers=2, num_experts=8, vocab_size=1024, hidden_size=256)
    config.update(num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=64)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    llm = LLM(model=path, load_format="dummy", device="cpu", skip_tokenizer_init=True)
    assert llm.llm_engine.model_config.hf_config.num_experts == 8
    sp = SamplingParams(max_tokens=5, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": [1, 2, 3]}] * 2, sp, use_tqdm=False)
    llm.shutdown()
    assert [len(o.outputs[0].token_ids) for o in outs] == [5, 5]
