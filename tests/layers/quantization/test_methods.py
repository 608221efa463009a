"""AWQ, GPTQ, SqueezeLLM and FP8 checkpoints (tiny random Llama, test packers) against
the same model with the packers' dequantized float32 weights, both run by pagedllm on
the CPU. float32: logits within 1e-4, greedy tokens identical. dtype="half": both in
float16, logits within 3e-2 (the quantized path dequantizes in float32 and rounds to
half once, the reference loads half weights: the same values), greedy tokens identical."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from harness import PagedHarness, load_model
from packers import pack_awq, pack_fp8, pack_gptq, pack_squeezellm
from quant_checkpoint import write_quantized

PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [7, 7, 2, 8]]

AWQ = {"quant_method": "awq", "bits": 4, "zero_point": True, "version": "gemm"}
GPTQ = {"quant_method": "gptq", "checkpoint_format": "gptq"}
CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "awq-g32": (partial(pack_awq, group=32), {**AWQ, "group_size": 32}),
    "awq-g64": (partial(pack_awq, group=64), {**AWQ, "group_size": 64}),
    "gptq-4bit-g32": (
        partial(pack_gptq, bits=4, group=32, desc_act=False, sym=False),
        {**GPTQ, "bits": 4, "group_size": 32, "desc_act": False, "sym": False},
    ),
    "gptq-4bit-channelwise-sym": (
        partial(pack_gptq, bits=4, group=-1, desc_act=False, sym=True),
        {**GPTQ, "bits": 4, "group_size": -1, "desc_act": False, "sym": True},
    ),
    "gptq-4bit-act-order": (
        partial(pack_gptq, bits=4, group=16, desc_act=True, sym=True),
        {**GPTQ, "bits": 4, "group_size": 16, "desc_act": True, "sym": True},
    ),
    "gptq-8bit-g64": (
        partial(pack_gptq, bits=8, group=64, desc_act=False, sym=False),
        {**GPTQ, "bits": 8, "group_size": 64, "desc_act": False, "sym": False},
    ),
    "squeezellm": (pack_squeezellm, {"quant_method": "squeezellm", "wbits": 4}),
    "fp8-per-tensor-dynamic": (
        partial(pack_fp8, per_channel=False, static=False),
        {"quant_method": "fp8", "activation_scheme": "dynamic"},
    ),
    "fp8-per-channel-static": (
        partial(pack_fp8, per_channel=True, static=True),
        {"quant_method": "fp8", "activation_scheme": "static"},
    ),
}


def _run(path: Path, dtype: str) -> tuple[list[torch.Tensor], list[list[int]]]:
    model, model_config = load_model(str(path), dtype=dtype)
    logits = PagedHarness(model, model_config).prompt_logits(PROMPTS)
    model, model_config = load_model(str(path), dtype=dtype)
    return logits, PagedHarness(model, model_config).greedy(PROMPTS, max_tokens=8)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("half", 3e-2)])
@pytest.mark.parametrize("case", list(CASES))
def test_quantized_matches_dequantized(tmp_path: Path, case: str, dtype: str, tol: float) -> None:
    packer, quant_config = CASES[case]
    quant, ref = write_quantized(tmp_path, packer, quant_config)
    q_logits, q_tokens = _run(quant, dtype)
    r_logits, r_tokens = _run(ref, dtype)
    for q, r in zip(q_logits, r_logits):
        torch.testing.assert_close(q.float(), r.float(), atol=tol, rtol=tol)
    assert q_tokens == r_tokens


def test_awq_keeps_weights_packed(tmp_path: Path) -> None:
    quant, _ = write_quantized(tmp_path, *CASES["awq-g32"])
    model, _ = load_model(str(quant))
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.qweight.dtype == torch.int32 and qkv.qweight.shape == (64 // 8, 128)
    assert not hasattr(qkv, "weight")


def test_fp8_online_quantization_of_a_float_checkpoint(tmp_path: Path) -> None:
    """quantization="fp8" on a float checkpoint: e4m3 weights, per-channel scales;
    logits near the float model's (fp8 keeps ~2 significant digits)."""
    _, ref = write_quantized(tmp_path, *CASES["fp8-per-tensor-dynamic"])
    model, model_config = load_model(str(ref), quantization="fp8")
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    (q_logits,) = PagedHarness(model, model_config).prompt_logits(PROMPTS[:1])
    (r_logits,) = _run(ref, "float32")[0][:1]
    assert (q_logits - r_logits).abs().max() < 0.1 * r_logits.abs().max()


def test_gptq_modules_to_not_convert_and_dummy_weights(tmp_path: Path) -> None:
    packer, config = CASES["gptq-4bit-g32"]
    config = {**config, "modules_to_not_convert": ["o_proj"]}
    quant, ref = write_quantized(tmp_path, packer, config, skip=("o_proj",))
    q_logits, _ = _run(quant, "float32")
    r_logits, _ = _run(ref, "float32")
    torch.testing.assert_close(q_logits[0], r_logits[0], atol=1e-4, rtol=1e-4)
    model, model_config = load_model(str(quant), load_format="dummy")
    (logits,) = PagedHarness(model, model_config).prompt_logits(PROMPTS[:1])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("quantization", ["awq", "gptq", "fp8"])
def test_dummy_weights_in_a_methods_default_layout(tmp_path: Path, quantization: str) -> None:
    """The benchmarks' case: load_format="dummy" with quantization= on a config without
    quantization_config (default layout: 4-bit, group 128), end to end through LLM."""
    from transformers import LlamaConfig

    from pagedllm import LLM, SamplingParams

    LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(tmp_path)
    llm = LLM(
        model=str(tmp_path),
        load_format="dummy",
        quantization=quantization,
        device="cpu",
        skip_tokenizer_init=True,
        max_model_len=64,
    )
    try:
        params = SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False)
        (out,) = llm.generate([{"prompt_token_ids": [1, 2, 3]}], params, use_tqdm=False)
        assert len(out.outputs[0].token_ids) == 4
    finally:
        llm.shutdown()
