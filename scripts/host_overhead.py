"""Host (Python) time per engine step outside the model, on a tiny model on the CPU:
256 requests decoding together, like the GPU throughput workloads. Prints the mean
step time split into model execution and everything else."""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from pagedllm import LLM, SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import save_tiny_llama  # noqa: E402


def main() -> None:
    model = save_tiny_llama(Path(tempfile.mkdtemp()))
    llm = LLM(
        model=model, device="cpu", dtype="float32", skip_tokenizer_init=True, async_scheduling=True
    )
    engine = llm.llm_engine
    executor = engine.executor
    spent = {"model": 0.0}
    original = executor.execute_model

    def timed(out):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        result = original(out)
        spent["model"] += time.perf_counter() - start
        return result

    executor.execute_model = timed  # type: ignore[method-assign]
    prompts = [{"prompt_token_ids": [(i * 7 + j) % 500 for j in range(100)]} for i in range(256)]
    sp = SamplingParams(temperature=1.0, max_tokens=200, ignore_eos=True, detokenize=False)
    llm.generate(prompts[:4], sp, use_tqdm=False)
    spent["model"] = 0.0
    prof = cProfile.Profile() if "--profile" in sys.argv else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    llm.generate(prompts, sp, use_tqdm=False)
    if prof:
        prof.disable()
    total = time.perf_counter() - start
    steps = 200 + 1
    print(
        f"{total / steps * 1e3:.2f} ms/step, model {spent['model'] / steps * 1e3:.2f} ms, "
        f"host {(total - spent['model']) / steps * 1e3:.2f} ms"
    )
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
