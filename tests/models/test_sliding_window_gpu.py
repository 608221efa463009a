"""Gemma 2 (sliding window + attention soft-cap), Gemma 3, Mistral and Qwen2 (sliding
windows) on a GPU through the Triton attention backend: greedy tokens identical to HF's (float32), eager
and with CUDA graphs (decode graphs and piecewise graphs captured and used), for prompts
several windows long, prefilled in chunks beside decoding sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_configs import hf_greedy, save_tiny, tiny_configs, windowed_configs

# Window 8 in the tiny configs: 20 to 75 tokens of prompt, 24 more decoded.
PROMPTS = [[(7 * i + 5 * j) % 500 + 3 for j in range(20 + 5 * i)] for i in range(12)]
MAX_TOKENS = 24


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gemma2", "gemma3", "mistral-window", "qwen2-window"])
@pytest.mark.parametrize("enforce_eager", [True, False])
def test_windowed_gemma_on_gpu_matches_hf(tmp_path: Path, name: str, enforce_eager: bool) -> None:
    from pagedllm import LLM, SamplingParams

    hf_model = save_tiny({**tiny_configs(), **windowed_configs()}[name], tmp_path)
    expected = [hf_greedy(hf_model, p, MAX_TOKENS) for p in PROMPTS]
    llm = LLM(
        model=str(tmp_path),
        dtype="float32",
        skip_tokenizer_init=True,
        gpu_memory_utilization=0.2,
        max_model_len=256,
        max_num_batched_tokens=64,  # chunked prefills, mixed with decodes
        max_num_seqs=8,
        enforce_eager=enforce_eager,
    )
    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    runner = llm.llm_engine.executor.worker.model_runner
    captured = runner.cuda_graphs is not None and bool(runner.cuda_graphs.graphs)
    pieces = runner.piecewise_graphs.num_replays if runner.piecewise_graphs else 0
    llm.shutdown()
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    assert captured == (not enforce_eager)
    assert (pieces > 0) == (not enforce_eager)
