"""End-to-end checks on the GPU: greedy tokens of the Triton backend and CUDA graphs
against the torch backend in eager mode (same dummy weights), then the throughput
(T1/T2) and latency (L1) benchmarks. Prints one table line per check."""

from __future__ import annotations

import argparse
import json
import os
import time


def greedy_tokens(model_dir: str, backend: str, enforce_eager: bool) -> list[list[int]]:
    from pagedllm import LLM, SamplingParams

    os.environ["PAGEDLLM_ATTENTION_BACKEND"] = backend
    llm = LLM(
        model=model_dir,
        load_format="dummy",
        skip_tokenizer_init=True,
        max_model_len=2048,
        enforce_eager=enforce_eager,
        gpu_memory_utilization=0.5,
        max_num_seqs=64,
        seed=0,
    )
    prompts = [
        {"prompt_token_ids": [(i * 37 + j) % 5000 for j in range(n)]}
        for i, n in enumerate((5, 70, 300, 33))
    ]
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, detokenize=False)
    out = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    llm.shutdown()
    os.environ.pop("PAGEDLLM_ATTENTION_BACKEND")
    return out


def check_backends(shape: str) -> None:
    from pagedllm.benchmarks.workload import shape_dir

    d = shape_dir(shape)
    ref = greedy_tokens(d, "torch", True)
    for backend, eager in (("triton", True), ("triton", False)):
        got = greedy_tokens(d, backend, eager)
        same = sum(a == b for a, b in zip(ref, got))
        prefix = [
            next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
            for a, b in zip(ref, got)
        ]
        print(
            f"CHECK {shape} {backend} eager={eager}: {same}/{len(ref)} identical, first divergence {prefix}",
            flush=True,
        )


def count_syncs() -> None:
    """Run decode steps with torch's sync debug mode on: every host<->device sync
    inside the engine step is reported (the hot path should have one per step, in
    the output's event wait)."""
    import collections
    import warnings

    import torch

    from pagedllm import LLM, SamplingParams
    from pagedllm.benchmarks.workload import shape_dir

    llm = LLM(
        model=shape_dir("qwen3-0.6b"),
        load_format="dummy",
        skip_tokenizer_init=True,
        max_model_len=2048,
        gpu_memory_utilization=0.5,
        max_num_seqs=64,
    )
    engine = llm.llm_engine
    for i in range(32):
        engine.add_request(
            str(i),
            {"prompt_token_ids": [i + 1] * (20 + i)},
            SamplingParams(max_tokens=40, ignore_eos=True, detokenize=False),
        )
    for _ in range(3):
        engine.step()
    places: collections.Counter[str] = collections.Counter()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            engine.step()
    torch.cuda.set_sync_debug_mode(0)
    for w in caught:  # the warning points at the Python line that synchronized
        places[f"{w.filename}:{w.lineno}"] += 1
    print(f"SYNCS in 10 decode steps: {len(caught)}; by place: {places.most_common(8)}", flush=True)
    llm.shutdown()


def main() -> None:
    import multiprocessing

    multiprocessing.set_start_method("spawn", force=True)
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="check,T1,L1")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    steps = args.steps.split(",")
    if "check" in steps:
        check_backends("qwen3-0.6b")
    if "syncs" in steps:
        count_syncs()
    from pagedllm.benchmarks import latency, throughput

    for wl in ("T1", "T2"):
        if wl in steps:
            t = time.perf_counter()
            extra = ["--measure-kv-waste"] if wl == "T1" else []
            throughput.main(["--workload", wl, "--output-json", f"{args.out}/{wl}.json", *extra])
            print(f"{wl} wall {time.perf_counter() - t:.0f}s", flush=True)
    if "T2tp2" in steps:
        throughput.main(
            [
                "--workload",
                "T2",
                "--tensor-parallel-size",
                "2",
                "--output-json",
                f"{args.out}/T2tp2.json",
            ]
        )
    for wl in ("T1hf", "T2hf"):
        if wl in steps:
            throughput.main(
                ["--workload", wl[:2], "--backend", "hf", "--output-json", f"{args.out}/{wl}.json"]
            )
    if "L1" in steps:
        latency.main(["--output-json", f"{args.out}/L1.json"])
    if "L1tp2" in steps:
        latency.main(["--tensor-parallel-size", "2", "--output-json", f"{args.out}/L1tp2.json"])
    print("SUMMARY")
    for name in ("T1", "T2", "T1hf", "T2hf", "L1", "T2tp2", "L1tp2"):
        path = f"{args.out}/{name}.json"
        if os.path.exists(path):
            print(name, json.dumps(json.load(open(path))))


if __name__ == "__main__":
    main()
