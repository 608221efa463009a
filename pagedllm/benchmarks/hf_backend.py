"""The HF transformers peer, batched as vLLM's `--backend hf` does: requests are
taken in order into a batch while max(prompt) + max(output) <= max_len, then one
`generate` call with left padding and max_new_tokens = the batch's longest output."""

from __future__ import annotations

import time
from typing import Any

import torch

from pagedllm.benchmarks.workload import BenchRequest


def _batches(
    requests: list[BenchRequest], max_batch: int, max_len: int
) -> list[list[BenchRequest]]:
    batches: list[list[BenchRequest]] = []
    current: list[BenchRequest] = []
    for r in requests:
        trial = current + [r]
        longest = max(len(x.prompt_token_ids) for x in trial) + max(x.output_len for x in trial)
        if current and (len(trial) > max_batch or longest > max_len):
            batches.append(current)
            trial = [r]
        current = trial
    if current:
        batches.append(current)
    return batches


def _generate(model: Any, batch: list[BenchRequest], device: torch.device) -> None:
    width = max(len(r.prompt_token_ids) for r in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, r in enumerate(batch):  # left padding
        ids[j, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
        mask[j, width - len(r.prompt_token_ids) :] = 1
    max_out = max(r.output_len for r in batch)
    model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=max_out,
        min_new_tokens=max_out,
        pad_token_id=0,
    )


@torch.inference_mode()
def run_hf_generate(
    shape: dict[str, Any], requests: list[BenchRequest], max_batch: int = 256, max_len: int = 2048
) -> float:
    from transformers import AutoConfig, AutoModelForCausalLM

    config_kwargs = {
        k: v for k, v in shape.items() if k not in ("architectures", "model_type", "torch_dtype")
    }
    config = AutoConfig.for_model(str(shape["model_type"]), **config_kwargs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    _generate(model, [BenchRequest([1] * 16, 8)], device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in _batches(requests, max_batch, max_len):
        _generate(model, batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start
