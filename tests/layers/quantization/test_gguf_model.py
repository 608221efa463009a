"""GGUF files kept packed (the default on the CPU, as quantization="gguf") against
the same file dequantized to float32 (quantization="none"): a tiny random Llama holding every block type, and
the embedded SmolLM2 Q4_1 file on 16 chat prompts."""

from __future__ import annotations

import pytest
import torch
from gguf_checkpoint import MIXED_TYPES, write_tiny_llama_gguf
from harness import PagedHarness, load_model

from pagedllm.benchmarks.cpu_chat import TOPICS
from pagedllm.layers.linear import LinearBase
from pagedllm.layers.quantization.gguf_repack import PackedGGUF
from pagedllm.model_loader import get_tokenizer

PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8], [100, 200, 300, 400, 500], [5000, 6000, 7000]]


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "mixed.gguf", MIXED_TYPES))


@pytest.fixture(scope="module")
def mixed_models(mixed_file: str):
    return load_model(mixed_file), load_model(mixed_file, quantization="none")


def test_gguf_kept_packed_by_default_and_none_dequantizes(mixed_models) -> None:
    (model, config), (float_model, float_config) = mixed_models
    assert config.quantization == "gguf" and float_config.quantization is None
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert linears and all(m.gguf_parts for m in linears)  # type: ignore[attr-defined]
    # q/k/v of layer 0 are Q4_0, Q4_1 (one 4-bit layout, concatenated) and Q5_0 (int8).
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert [(p.bits, p.shape[0]) for p in qkv.gguf_parts] == [(4, 384), (8, 128)]
    assert isinstance(getattr(model.lm_head.weight, "gguf_packed", None), PackedGGUF)
    assert not any(isinstance(m, LinearBase) and m.is_quantized for m in float_model.modules())


def test_logits_close_to_float32(mixed_models) -> None:
    """Activations quantized to int8 per 32 (as llama.cpp does) cost ~1% of the logits."""
    (model, config), (float_model, float_config) = mixed_models
    ours = PagedHarness(model, config).prompt_logits(PROMPTS)
    ref = PagedHarness(float_model, float_config).prompt_logits(PROMPTS)
    for got, expected in zip(ours, ref):
        assert ((got - expected).norm() / expected.norm()).item() < 0.03
        assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()


def test_greedy_identical_to_float32(mixed_models) -> None:
    (model, config), (float_model, float_config) = mixed_models
    ours = PagedHarness(model, config).greedy(PROMPTS, 16, chunk=3)
    assert ours == PagedHarness(float_model, float_config).greedy(PROMPTS, 16)


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.timeout(900)
def test_smollm2_greedy_agreement_on_16_chats() -> None:
    """The embedded Q4_1 file, quantized vs float32, 32 greedy tokens of 16 chat prompts.

    Every step quantizes activations to int8 per 32 values (llama.cpp's Q8_1 scheme),
    prefill included (since the tenth session: no dequantized path from 128 rows, so
    that a row's result does not depend on its batch), so near-ties between the top
    two logits go either way, and a sequence differs from there on. Measured
    (2026-12-01, tenth session): 8 of 16 prompts identical over all 32 tokens, 72.7% of
    the 512 tokens before each prompt's first difference (with prefill dequantized,
    c4b9a0b: 9 of 16, 81.1%; the exact dequantizing path everywhere,
    PAGEDLLM_GGUF_KERNEL=reference: 16 of 16, 100%). Asserted: >= 7 identical, >= 70%.
    llama.cpp (llama-cpp-python 0.3.36, same file) quantizes the same way: asked "What
    is the capital of France?" it answers "L'Étoile, la Marseilla" greedily, as this
    path does (test_cli), where float32 answers "Paris"."""
    model, config = load_model(None)  # the default on the CPU: kept packed
    float_model, float_config = load_model(None, quantization="none")
    assert config.quantization == "gguf"
    tokenizer = get_tokenizer(config.tokenizer)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write a short paragraph about {topic}."}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for topic in TOPICS
    ]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ours = PagedHarness(model, config, block_size=16).greedy(prompts, 32)
    ref = PagedHarness(float_model, float_config, block_size=16).greedy(prompts, 32)
    same = sum(a == b for a, b in zip(ours, ref))
    rate = sum(_common_prefix(a, b) for a, b in zip(ours, ref)) / (32 * len(prompts))
    print(f"SmolLM2 Q4_1 quantized vs float32: {same}/16 identical, {rate:.1%} agreement")
    assert same >= 7 and rate >= 0.7
    assert torch.equal(torch.tensor(ours[0][:4]), torch.tensor(ref[0][:4]))
