"""Where does device time go in a throughput run? torch.profiler over a window of
engine steps of a workload (default T1), then the top CUDA kernels by total time and
the share of the window the device was busy. On the CPU (no CUDA) it profiles CPU ops.

    python scripts/profile_gpu.py --workload T1 --skip-steps 300 --steps 30
    python scripts/profile_gpu.py --workload T1 --timeline   # whole run, no profiler

--timeline runs the whole workload without the profiler and prints the wall time of
the steps grouped by how many requests were running (where the seconds of a run go).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.workload import WORKLOADS, make_requests, shape_dir
from pagedllm.sampling_params import RequestOutputKind


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="T1")
    ap.add_argument("--model", default=None)
    ap.add_argument("--num", type=int, default=None)
    ap.add_argument("--skip-steps", type=int, default=300, help="steps before the window")
    ap.add_argument("--steps", type=int, default=30, help="steps in the profiled window")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--timeline", action="store_true", help="whole run, steps by batch size")
    ap.add_argument("--cprofile", action="store_true", help="Python (host) profile of the window")
    ap.add_argument(
        "--windows",
        default=None,
        help="several windows in one run: START:STEPS[c],... (engine steps from the start; "
        "a trailing c profiles that window's host side with cProfile instead)",
    )
    ap.add_argument("--trace-dir", default=None, help="write a Chrome trace of each window here")
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
            temperature=1.0,
            ignore_eos=True,
            max_tokens=r.output_len,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,  # as LLM.generate asks
        )
        engine.add_request(str(i), {"prompt_token_ids": r.prompt_token_ids}, sp)
    if args.timeline:
        timeline(engine)
        return
    windows = parse_windows(args.windows) if args.windows else [(args.skip_steps, args.steps)]
    done = 0
    for start_step, steps, host in windows:
        for _ in range(start_step - done):
            engine.step()
        print(f"=== window: steps {start_step}..{start_step + 2 * steps - 1} ===")
        before = allocator_counts()
        trace = f"{args.trace_dir}/trace_{start_step}.json" if args.trace_dir else None
        profile_window(engine, steps, args.top, args.cprofile or host, trace)
        after = allocator_counts()
        print("allocator:", {k: after[k] - before[k] for k in after})
        done = start_step + 2 * steps  # a plain pass, then the profiled one


def parse_windows(text: str) -> list[tuple[int, int, bool]]:
    """'5:10c,100:20' -> [(5, 10, True), (100, 20, False)]; each window runs 2 x STEPS
    steps (plain, then profiled); c: profile the host (cProfile) rather than the device."""
    windows = []
    for part in text.split(","):
        start, steps = part.split(":")
        windows.append((int(start), int(steps.rstrip("c")), steps.endswith("c")))
    for (a, n, _), (b, _, _) in zip(windows, windows[1:], strict=False):
        if b < a + 2 * n:
            raise ValueError(f"--windows must not overlap: {text}")
    return windows


def allocator_counts() -> dict[str, int]:
    """The caching allocator's counters that show device mallocs, frees and retries."""
    if not torch.cuda.is_available():
        return {}
    stats = torch.cuda.memory_stats()
    keys = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams")
    return {k: int(stats.get(k, 0)) for k in keys}


def profile_window(  # type: ignore[no-untyped-def]
    engine, steps: int, top: int, cprofile: bool, trace: str | None = None
) -> None:
    """Time `steps` engine steps plainly, then profile the next `steps`."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    if cuda:
        torch.cuda.synchronize()
    plain = (time.perf_counter() - start) / steps
    print(f"without the profiler: {plain * 1e3:.2f} ms/step over {steps} steps")
    if cprofile:
        host_profile(engine, steps, top)
        return
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            engine.step()
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=top))
    if trace:
        prof.export_chrome_trace(trace)
    if cuda:
        busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
        print(
            f"window: {steps} steps in {wall * 1e3:.1f} ms wall; device busy {busy * 1e3:.1f} ms "
            f"({100 * busy / wall:.0f}%), {wall / steps * 1e3:.2f} ms/step"
        )


def host_profile(engine, steps: int, top: int) -> None:  # type: ignore[no-untyped-def]
    """cProfile of `steps` engine steps: where the host's time goes."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        engine.step()
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


BUCKETS = (1, 8, 32, 64, 128, 192, 256, 512, 1 << 30)


def timeline(engine) -> None:  # type: ignore[no-untyped-def]
    """Step wall times grouped by the number of running requests."""
    rows: dict[int, list[float]] = {}
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        running = len(engine.scheduler.running) + len(engine.scheduler.waiting)
        t0 = time.perf_counter()
        engine.step()
        bucket = next(b for b in BUCKETS if running <= b)
        rows.setdefault(bucket, []).append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    print(f"timeline: {sum(len(v) for v in rows.values())} steps in {total:.2f} s")
    lower = 0
    for bucket in BUCKETS:
        if bucket in rows:
            times = rows[bucket]
            print(
                f"  running {lower + 1:>4}-{bucket:<5} steps {len(times):>5}  "
                f"{sum(times):7.2f} s  {1e3 * sum(times) / len(times):6.2f} ms/step"
            )
        lower = bucket


if __name__ == "__main__":
    main()
