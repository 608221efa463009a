"""Tensor parallelism on CPU: two gloo processes load a tiny model sharded (vocab
padding, replicated kv heads, fused GPT-2 qkv, ChatGLM's fused query_key_value) and must
give HF's logits."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from chatglm_checkpoint import save_tiny_chatglm
from harness import PagedHarness, load_model
from tiny_configs import hf_logits, save_tiny, tiny_configs

from pagedllm.distributed import destroy_model_parallel, init_model_parallel

PROMPTS = [[5, 17, 200, 3, 99, 41, 7], [300, 2, 8]]
WORLD = 2


def _worker(rank: int, model_dirs: list[str], init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        init_model_parallel(WORLD)
        results = {}
        for model_dir in model_dirs:
            model, model_config = load_model(model_dir, trust_remote_code=True)
            vocab = model_config.vocab_size
            assert model.lm_head.weight.shape[0] == -(-vocab // WORLD)  # sharded, padded
            results[model_dir] = PagedHarness(model, model_config).prompt_logits(PROMPTS)
        if rank == 0:
            torch.save(results, out_file)
    finally:
        destroy_model_parallel()
        dist.destroy_process_group()


def _configs():
    configs = tiny_configs()
    # vocab 509: not a multiple of tp (the last rank holds padding rows);
    # one kv head: replicated on both ranks.
    odd = configs["qwen2"]
    odd.vocab_size, odd.num_key_value_heads = 509, 1
    return {
        "qwen2-odd-vocab-mqa": odd,
        "gpt2": configs["gpt2"],
        "llama3-tied": configs["llama3-tied"],
        # Every expert split along its intermediate dim, the shared expert row-parallel,
        # one all-reduce of their sum.
        "qwen2-moe": configs["qwen2-moe"],
        # q/k/v and gate/up loaded separately and fused: each split per rank.
        "glm4": configs["glm4"],
    }


def test_tp2_matches_hf(tmp_path: Path) -> None:
    """One pair of processes (spawning is the slow part) runs every config."""
    hf_models = {
        str(tmp_path / name): save_tiny(cfg, tmp_path / name) for name, cfg in _configs().items()
    }
    # ChatGLM: query_key_value and dense_h_to_4h arrive fused, split per rank on load.
    hf_models[str(tmp_path / "chatglm")] = save_tiny_chatglm(tmp_path / "chatglm")[0]
    out_file = tmp_path / "logits.pt"
    mp.spawn(_worker, args=(list(hf_models), str(tmp_path / "init"), str(out_file)), nprocs=WORLD)
    results = torch.load(out_file)
    for model_dir, hf_model in hf_models.items():
        for prompt, logits in zip(PROMPTS, results[model_dir]):
            torch.testing.assert_close(logits, hf_logits(hf_model, prompt), atol=1e-4, rtol=1e-4)
