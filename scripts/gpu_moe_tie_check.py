"""How far bf16 moves a tiny MoE's logprobs, ours and HF's own.

For each tiny MoE config: pagedllm in bf16 (eager and graphs) generates 16 greedy tokens;
HF in float32 and HF in bf16 (both on CUDA) score the same tokens. Prints the largest
|ours - HF fp32|, |HF bf16 - HF fp32| and |ours - HF bf16| per prompt, so a failure of
`test_tiny_moe_in_bf16_on_cuda_close_to_hf` can be told apart from bf16's own rounding
(a router near-tie moves HF's bf16 as much as ours).

    python3 scripts/gpu_moe_tie_check.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))

from tiny_configs import save_tiny, tiny_configs  # noqa: E402

PROMPTS = [[5, 17, 200, 3, 99, 41, 7], [300, 2, 8], list(range(11, 40))]


def _hf_logprobs(model: torch.nn.Module, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + tokens[:-1]], device="cuda")
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 :].float().log_softmax(-1).cpu()
    return logits[torch.arange(len(tokens)), torch.tensor(tokens)]


def check(name: str, enforce_eager: bool) -> None:
    from pagedllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        hf = save_tiny(tiny_configs()[name], Path(tmp))
        llm = LLM(
            model=tmp,
            dtype="bfloat16",
            skip_tokenizer_init=True,
            enforce_eager=enforce_eager,
            gpu_memory_utilization=0.2,
            max_model_len=256,
        )
        sp = SamplingParams(
            temperature=0.0, max_tokens=16, ignore_eos=True, detokenize=False, logprobs=0
        )
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
        llm.shutdown()
        hf32 = hf.float().cuda()
        rows = []
        for prompt, out in zip(PROMPTS, outs):
            tokens = list(out.outputs[0].token_ids)
            ours = torch.tensor(
                [lp[t].logprob for lp, t in zip(out.outputs[0].logprobs or [], tokens)]
            )
            ref32 = _hf_logprobs(hf32, prompt, tokens)
            rows.append((prompt, tokens, ours, ref32))
        hf16 = hf32.to(torch.bfloat16)
        for prompt, tokens, ours, ref32 in rows:
            ref16 = _hf_logprobs(hf16, prompt, tokens)
            print(
                f"{name:10s} eager={enforce_eager!s:5s} len={len(prompt):2d} "
                f"|ours-hf32|={(ours - ref32).abs().max():.3f} "
                f"|hf16-hf32|={(ref16 - ref32).abs().max():.3f} "
                f"|ours-hf16|={(ours - ref16).abs().max():.3f}",
                flush=True,
            )


def main() -> None:
    for name in ["mixtral", "qwen2-moe", "qwen3-moe"]:
        for eager in (True, False):
            check(name, eager)


if __name__ == "__main__":
    main()
