"""Piecewise CUDA graphs on a GPU: greedy tokens of prefill, chunked-prefill and mixed
steps identical with and without the pieces (float32), and the pieces really ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_configs import save_tiny, tiny_configs


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_pieces_give_the_eager_tokens(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pagedllm import LLM, SamplingParams

    save_tiny(tiny_configs()[name], tmp_path)
    prompts = [[(7 * i + j) % 300 + 3 for j in range(20 + 13 * i)] for i in range(12)]
    sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, detokenize=False)
    results = {}
    for pieces in ("0", "1"):
        monkeypatch.setenv("PAGEDLLM_PIECEWISE_GRAPHS", pieces)
        llm = LLM(
            model=str(tmp_path),
            dtype="float32",
            skip_tokenizer_init=True,
            gpu_memory_utilization=0.2,
            max_model_len=256,
            max_num_batched_tokens=96,  # chunked prefills, mixed with decodes
            max_num_seqs=8,
        )
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        runner = llm.llm_engine.executor.worker.model_runner
        replays = runner.piecewise_graphs.num_replays if runner.piecewise_graphs else 0
        results[pieces] = ([list(o.outputs[0].token_ids) for o in outs], replays)
        llm.shutdown()
    assert results["1"][0] == results["0"][0]  # ran green on an H200 (llama), 2026-12-01
    assert results["0"][1] == 0 and results["1"][1] > 10
