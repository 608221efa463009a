"""Where does device time go in a throughput run? torch.profiler over a window of
engine steps of a workload (default T1), then the top CUDA kernels by total time and
the share of the window the device was busy. On the CPU (no CUDA) it profiles CPU ops.

    python scripts/profile_gpu.py --workload T1 --skip-steps 300 --steps 30
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.workload import WORKLOADS, make_requests, shape_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="T1")
    ap.add_argument("--model", default=None)
    ap.add_argument("--num", type=int, default=None)
    ap.add_argument("--skip-steps", type=int, default=300, help="steps before the window")
    ap.add_argument("--steps", type=int, default=30, help="steps in the profiled window")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    shape, num, in_range, out_range = WORKLOADS[args.workload]
    llm = LLM(
        model=args.model or shape_dir(shape),
        load_format="dummy",
        skip_tokenizer_init=True,
        max_model_len=4096,
    )
    engine = llm.llm_engine
    for i, r in enumerate(make_requests(args.num or num, in_range, out_range)):
        sp = SamplingParams(
            temperature=1.0, ignore_eos=True, max_tokens=r.output_len, detokenize=False
        )
        engine.add_request(str(i), {"prompt_token_ids": r.prompt_token_ids}, sp)
    for _ in range(args.skip_steps):
        engine.step()
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            engine.step()
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.top))
    if cuda:
        busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
        print(
            f"window: {args.steps} steps in {wall * 1e3:.1f} ms wall; device busy {busy * 1e3:.1f} ms "
            f"({100 * busy / wall:.0f}%), {wall / args.steps * 1e3:.2f} ms/step"
        )


if __name__ == "__main__":
    main()
