"""On CUDA the runner pads the LM head's rows to the decode graphs' batch sizes (a few
cuBLAS shapes instead of one per batch size). The padding must not change what is
sampled: here, on the CPU, the same runner with buckets forced on gives the same greedy
tokens as without, and the LM head did run at the padded row counts."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_configs import hf_greedy, save_tiny, tiny_configs

from pagedllm import LLM, SamplingParams


def test_padded_lm_head_rows_sample_the_same_tokens(tmp_path: Path) -> None:
    hf_model = save_tiny(tiny_configs()["llama"], tmp_path)
    prompts = [[5, 17, 200, 3, 99, 41, 7], [300, 2, 8], list(range(11, 40))]
    expected = [hf_greedy(hf_model, p, 12) for p in prompts]
    llm = LLM(model=str(tmp_path), dtype="float32", skip_tokenizer_init=True, max_model_len=128)
    runner = llm.llm_engine.executor.worker.model_runner
    runner._logits_buckets = lambda: [1, 2, 4, 8]  # what a CUDA runner with graphs uses
    rows: list[int] = []
    head = runner.model.compute_logits

    def recording_head(hidden: torch.Tensor) -> torch.Tensor:
        rows.append(hidden.shape[0])
        return head(hidden)

    runner.model.compute_logits = recording_head
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    llm.shutdown()
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    assert set(rows) <= {1, 2, 4, 8} and 4 in rows  # 3 sequences ran at 4 rows
