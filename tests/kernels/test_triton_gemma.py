"""Tiny Gemma 2 (alternating sliding/global layers, attention soft-cap) and Gemma 3 (3
sliding : 1 global) on the Triton attention backend, run on the CPU through Triton's
interpreter: every layer attends through the Triton kernels (none falls back to torch),
and the greedy tokens of chunked prefills several windows long, then decodes, are HF's.
The harness and configs are tests/models' (this folder's conftest sets TRITON_INTERPRET
before triton is imported, which is why the test lives here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

from harness import PagedHarness, load_model  # noqa: E402
from tiny_configs import hf_greedy, save_tiny, tiny_configs  # noqa: E402

from pagedllm.layers.attention.layer import (  # noqa: E402
    Attention,
    needs_torch_attention,
    set_attention_backend,
)
from pagedllm.layers.attention.triton_backend import TritonAttentionBackend  # noqa: E402

# Window 8 in the tiny configs: prompts of 3-4 windows, prefilled 5 tokens at a time
# beside each other (chunks after a cached context), then decoded past further windows.
PROMPTS = [
    [(7 * i + 3) % 500 + 1 for i in range(30)],
    [(11 * i + 5) % 500 + 1 for i in range(19)],
]
MAX_TOKENS = 12


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_gemma_on_triton_backend_matches_hf(tmp_path: Path, name: str) -> None:
    hf_model = save_tiny(tiny_configs()[name], tmp_path)
    model, model_config = load_model(str(tmp_path))
    assert set_attention_backend(model, TritonAttentionBackend(decode_num_splits=2)) > 0
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert any(m.sliding_window for m in layers) and any(not m.sliding_window for m in layers)
    assert not needs_torch_attention(model)  # so the model runner captures CUDA graphs
    ours = PagedHarness(model, model_config, block_size=4, seed=4).greedy(
        PROMPTS, MAX_TOKENS, chunk=5
    )
    assert ours == [hf_greedy(hf_model, prompt, MAX_TOKENS) for prompt in PROMPTS]
