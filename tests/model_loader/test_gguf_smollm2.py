"""The packaged SmolLM2-135M-Instruct GGUF (Q4_1): pagedllm's greedy tokens equal HF
transformers' on the same file (both dequantize to float32 at load time:
quantization="none"; the default keeps it quantized, tests/layers/quantization)."""

from __future__ import annotations

import pytest
import torch
from harness import PagedHarness, load_model
from tiny_configs import hf_greedy

from pagedllm.model_loader import get_tokenizer
from pagedllm.model_loader.gguf import iterate_gguf_weights

PROMPTS = ["The capital of France is", "请用一句话介绍一下长城。"]
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def smollm2():
    model, model_config = load_model(None, quantization="none")  # the embedded model
    return model, model_config, get_tokenizer(model_config.tokenizer)


@pytest.fixture(scope="module")
def hf_smollm2(smollm2):
    """HF's Llama on the same GGUF, dequantized and renamed by transformers itself
    (what from_pretrained(gguf_file=...) does, without needing accelerate)."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model_config = smollm2[1]
    hf_model = AutoModelForCausalLM.from_config(model_config.hf_config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(model_config.model, return_tensors=True, model_to_load=hf_model)
    hf_model.reference_tensors = tensors["tensors"]
    missing, unexpected = hf_model.load_state_dict(tensors["tensors"], strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf_model.tie_weights()
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()
    hf_model.generation_config.eos_token_id = None
    hf_model.generation_config.pad_token_id = 0
    return hf_model.eval()


def test_config_and_dtype(smollm2) -> None:
    model, model_config, _ = smollm2
    assert model_config.architecture == "LlamaForCausalLM"
    assert model_config.load_format == "gguf" and model_config.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied


def test_streaming_reader_equals_transformers(smollm2, hf_smollm2) -> None:
    """pagedllm's streaming GGUF reader yields exactly transformers' tensors."""
    model_config = smollm2[1]
    expected = hf_smollm2.reference_tensors
    ours = dict(iterate_gguf_weights(model_config.model, model_config.hf_config))
    assert sorted(ours) == sorted(expected)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, expected[name]), name


def test_greedy_matches_hf_english_and_chinese(smollm2, hf_smollm2) -> None:
    model, model_config, tokenizer = smollm2
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    ours = PagedHarness(model, model_config, block_size=16).greedy(prompts, MAX_TOKENS, chunk=4)
    for prompt, tokens in zip(prompts, ours):
        assert tokens == hf_greedy(hf_smollm2, prompt, MAX_TOKENS)
    assert "Paris" in tokenizer.decode(ours[0])
