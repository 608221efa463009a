"""llama.cpp (llama-cpp-python) as the peer of workload C1: the same GGUF file, the same
chat prompts, greedy, `max_tokens` each with EOS masked (as `ignore_eos`), one chat at
a time (its high-level API runs one sequence), `n_threads` CPU threads."""

from __future__ import annotations

import time
from typing import Any


def run_llama_cpp(
    gguf_path: str, prompts: list[str], max_tokens: int, n_threads: int = 2
) -> dict[str, Any]:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ValueError(
            "--llama-cpp needs llama-cpp-python (pip install llama-cpp-python==0.3.36)"
        ) from exc
    llm = Llama(model_path=gguf_path, n_ctx=2048, n_threads=n_threads, n_batch=512, verbose=False)
    no_eos = {llm.token_eos(): -1e9}
    chat = dict(max_tokens=max_tokens, temperature=0.0, top_k=1, logit_bias=no_eos)
    llm.create_chat_completion([{"role": "user", "content": "Hi"}], **chat)  # warm-up
    start = time.perf_counter()
    tokens = 0
    for prompt in prompts:
        out = llm.create_chat_completion([{"role": "user", "content": prompt}], **chat)
        tokens += int(out["usage"]["completion_tokens"])
    elapsed = time.perf_counter() - start
    return dict(
        engine="llama.cpp",
        batch=1,
        prompts=len(prompts),
        output_tokens=tokens,
        elapsed_s=round(elapsed, 2),
        output_tokens_per_s=round(tokens / elapsed, 1),
    )
