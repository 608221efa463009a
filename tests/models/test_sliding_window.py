"""Sliding windows of the Llama family (Mistral, Qwen2, Phi-3, Mixtral) and of models
through the Transformers fallback, against HF: each layer gets HF's window, and greedy
tokens of prompts several windows long, prefilled in chunks beside each other, are
HF's. (Gemma 2/3: test_model_parity.py; the Triton kernels: tests/kernels/.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import PagedHarness, load_model
from tiny_configs import hf_greedy, hf_logits, save_tiny, tiny_configs, windowed_configs
from transformers import Starcoder2Config

from pagedllm.layers.attention import Attention

CONFIGS = windowed_configs()
# Window 8: prompts of 5 and 3 windows, chunks of 5, then 24 tokens more.
PROMPTS = [
    [(7 * i + 3) % 500 + 1 for i in range(40)],
    [(11 * i + 5) % 500 + 1 for i in range(25)],
]
MAX_TOKENS = 24
EXPECTED_WINDOWS = {
    "mistral-window": [8, 8],
    "qwen2-window": [None, 8, 8],
    "phi3-window": [8, 8],
    "mixtral-window": [8, 8],
}


def _check_against_hf(hf_model: torch.nn.Module, path: Path, **load_kwargs: object) -> None:
    model, model_config = load_model(str(path), **load_kwargs)
    ours = PagedHarness(model, model_config, block_size=4, seed=4).greedy(
        PROMPTS, MAX_TOKENS, chunk=5
    )
    assert ours == [hf_greedy(hf_model, prompt, MAX_TOKENS) for prompt in PROMPTS]
    logits = PagedHarness(model, model_config).prompt_logits(PROMPTS)
    for prompt, got in zip(PROMPTS, logits):
        torch.testing.assert_close(got, hf_logits(hf_model, prompt), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_llama_family_windows_match_hf(tmp_path: Path, name: str) -> None:
    hf_model = save_tiny(CONFIGS[name], tmp_path)
    model, _ = load_model(str(tmp_path))
    windows = [m.sliding_window for m in model.modules() if isinstance(m, Attention)]
    assert windows == EXPECTED_WINDOWS[name]
    _check_against_hf(hf_model, tmp_path)


def test_no_window_unless_configured(tmp_path: Path) -> None:
    save_tiny(tiny_configs()["qwen2"], tmp_path)  # use_sliding_window false by default
    model, _ = load_model(str(tmp_path))
    assert all(m.sliding_window is None for m in model.modules() if isinstance(m, Attention))


@pytest.mark.parametrize("name", ["starcoder2", "gemma2"])
def test_fallback_takes_window_and_soft_cap_from_hf(tmp_path: Path, name: str) -> None:
    """HF's modeling code hands each layer's window (and Gemma 2's soft-cap) to the
    attention function; the fallback attends with them."""
    config = (
        Starcoder2Config(**{**_starcoder2_base(), "sliding_window": 8})
        if name == "starcoder2"
        else tiny_configs()["gemma2"]
    )
    hf_model = save_tiny(config, tmp_path)
    _check_against_hf(hf_model, tmp_path, model_impl="transformers")


def _starcoder2_base() -> dict[str, object]:
    return dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
    )
