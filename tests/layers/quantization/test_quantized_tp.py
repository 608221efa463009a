"""Quantized checkpoints under tensor parallelism on the CPU: two gloo processes load
AWQ, GPTQ (grouped and act-order) and FP8 checkpoints of a tiny Llama sharded
(packed int4/int8 columns, per-group scales and zeros, g_idx and per-channel scales
split with their weights) and must give the logits of the same model's dequantized
float32 weights on one process."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from harness import PagedHarness, load_model
from quant_checkpoint import write_quantized
from test_methods import CASES

from pagedllm.distributed import destroy_model_parallel, init_model_parallel

PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [7, 7, 2, 8]]
TP_CASES = [
    "awq-g32",
    "gptq-4bit-g32",
    "gptq-4bit-act-order",
    "fp8-per-channel-static",
]
WORLD = 2


def _worker(rank: int, model_dirs: list[str], init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        init_model_parallel(WORLD)
        results = {}
        for model_dir in model_dirs:
            model, model_config = load_model(model_dir, dtype="float32")
            results[model_dir] = PagedHarness(model, model_config).prompt_logits(PROMPTS)
        if rank == 0:
            torch.save(results, out_file)
    finally:
        destroy_model_parallel()
        dist.destroy_process_group()


def test_tp2_quantized_matches_dequantized_tp1(tmp_path: Path) -> None:
    pairs = {}
    for case in TP_CASES:
        packer, quant_config = CASES[case]
        quant, ref = write_quantized(tmp_path / case, packer, quant_config)
        pairs[str(quant)] = ref
    out_file = tmp_path / "logits.pt"
    mp.spawn(_worker, args=(list(pairs), str(tmp_path / "init"), str(out_file)), nprocs=WORLD)
    results = torch.load(out_file)
    for quant, ref in pairs.items():
        model, model_config = load_model(str(ref), dtype="float32")
        want = PagedHarness(model, model_config).prompt_logits(PROMPTS)
        for got, expected in zip(results[quant], want):
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=quant)
