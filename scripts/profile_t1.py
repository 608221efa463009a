"""Where does a throughput run spend its host time? cProfile over one generate()
of a workload (default: T1 with shorter outputs), top functions by own time."""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.workload import WORKLOADS, make_requests, shape_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="T1")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--top", type=int, default=45)
    args = ap.parse_args()
    shape, _, in_range, out_range = WORKLOADS[args.workload]
    llm = LLM(
        model=shape_dir(shape), load_format="dummy", skip_tokenizer_init=True, max_model_len=4096
    )
    reqs = make_requests(args.num, in_range, out_range)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [
        SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=r.output_len, detokenize=False)
        for r in reqs
    ]
    llm.generate(prompts[:8], params[:8], use_tqdm=False)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    llm.generate(prompts, params, use_tqdm=False)
    prof.disable()
    print(f"generate: {time.perf_counter() - start:.2f}s")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
