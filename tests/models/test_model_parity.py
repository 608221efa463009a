"""Every architecture against HF transformers: logits of a batched prefill, greedy
tokens of batched decode, and the same tokens with chunked prefill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import PagedHarness, load_model
from tiny_configs import hf_greedy, hf_logits, save_tiny, tiny_configs

CONFIGS = tiny_configs()
PROMPTS = [
    [5, 17, 200, 3, 99, 41, 7],
    [300, 2, 8],
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
]
MAX_TOKENS = 32


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path: Path = tmp_path_factory.mktemp(request.param)
    hf_model = save_tiny(CONFIGS[request.param], path)
    model, model_config = load_model(str(path))
    return hf_model, model, model_config


def test_prefill_logits_match_hf(pair) -> None:
    hf_model, model, model_config = pair
    ours = PagedHarness(model, model_config).prompt_logits(PROMPTS)
    for prompt, logits in zip(PROMPTS, ours):
        expected = hf_logits(hf_model, prompt)
        assert logits.dtype == torch.float32
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_greedy_decode_matches_hf(pair) -> None:
    hf_model, model, model_config = pair
    ours = PagedHarness(model, model_config, seed=1).greedy(PROMPTS, MAX_TOKENS)
    expected = [hf_greedy(hf_model, prompt, MAX_TOKENS) for prompt in PROMPTS]
    assert ours == expected


def test_chunked_prefill_gives_same_tokens(pair) -> None:
    hf_model, model, model_config = pair
    whole = PagedHarness(model, model_config, seed=2).greedy(PROMPTS, 8)
    chunked = PagedHarness(model, model_config, block_size=2, seed=3).greedy(PROMPTS, 8, chunk=3)
    assert chunked == whole


# Prompts several windows long (window 8), prefilled in chunks of 5 beside each other.
LONG_PROMPTS = [
    [(7 * i + 3) % 500 + 1 for i in range(40)],
    [(11 * i + 5) % 500 + 1 for i in range(25)],
]


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_sliding_window_long_prompts_chunked_match_hf(tmp_path: Path, name: str) -> None:
    hf_model = save_tiny(CONFIGS[name], tmp_path)
    model, model_config = load_model(str(tmp_path))
    ours = PagedHarness(model, model_config, block_size=4, seed=4).greedy(
        LONG_PROMPTS, MAX_TOKENS, chunk=5
    )
    assert ours == [hf_greedy(hf_model, prompt, MAX_TOKENS) for prompt in LONG_PROMPTS]
    logits = PagedHarness(model, model_config).prompt_logits(LONG_PROMPTS)
    for prompt, got in zip(LONG_PROMPTS, logits):
        torch.testing.assert_close(got, hf_logits(hf_model, prompt), atol=1e-4, rtol=1e-4)
