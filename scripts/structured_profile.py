"""`gpu_structured_bench.py --profile`: where a constrained T1 step's time goes.

Runs the 256 requests constrained for `steps` decode steps under torch.profiler, with
the engine's phases labelled (record_function around the methods below, patched on
the classes for this run only), and prints:

    the top-15 ops by self host (CPU) time, and by self CUDA time;
    the labelled phases (per step: calls, mean and total host ms);
    the wall time of the profiled steps, the union of the GPU's kernel/memcpy
    intervals in it, and so the GPU's idle share: the gap the host leaves it.

On the GPU a step is constrained-bound when `gpu idle` is large: the host's chain
(tokens of step N -> grammar advance -> bitmask fill -> sampling of step N+1 ->
schedule, prepare and launch step N+2) is longer than the device's forward pass.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any

PHASES = [
    ("pagedllm.core.engine_core", "EngineCore", "_add_grammar_bitmask"),
    ("pagedllm.core.engine_core", "EngineCore", "_finish_pending"),
    ("pagedllm.core.engine_core", "EngineCore", "make_outputs"),
    ("pagedllm.core.scheduler", "Scheduler", "schedule"),
    ("pagedllm.core.scheduler", "Scheduler", "update_from_output"),
    ("pagedllm.core.stop_checker", None, "check_grammar_stops"),
    ("pagedllm.worker.model_runner", "ModelRunner", "launch_forward"),
    ("pagedllm.worker.model_runner", "ModelRunner", "sample_tokens"),
    ("pagedllm.worker.model_runner", "ModelRunner", "_grammar_bitmask"),
    ("pagedllm.layers.sampler", "Sampler", "forward"),
    ("pagedllm.engine.llm_engine", "LLMEngine", "process_outputs"),
]


@contextlib.contextmanager
def labelled_phases() -> Iterator[None]:
    """record_function("phase:<name>") around each PHASES method while inside."""
    import importlib

    import torch

    undo = []
    for module_name, cls_name, attr in PHASES:
        module = importlib.import_module(module_name)
        owner: Any = getattr(module, cls_name) if cls_name else module
        original = getattr(owner, attr)

        def wrapped(*a: Any, _f: Any = original, _n: str = attr, **k: Any) -> Any:
            with torch.profiler.record_function(f"phase:{_n}"):
                return _f(*a, **k)

        setattr(owner, attr, functools.wraps(original)(wrapped))
        undo.append((owner, attr, original))
        if cls_name is None:  # a module function: patch where it is imported, too
            for user in ("pagedllm.core.scheduler",):
                mod = importlib.import_module(user)
                if getattr(mod, attr, None) is original:
                    setattr(mod, attr, getattr(owner, attr))
                    undo.append((mod, attr, original))
    try:
        yield
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


def profile_constrained(llm: Any, prompts: list[Any], params: list[Any], steps: int) -> None:
    """Profile `steps` decode steps of the constrained requests (prefill excluded: the
    requests are run once to fill the caches of the compile and the grammar backend)."""
    import dataclasses

    import torch
    from torch.profiler import ProfilerActivity, profile

    short = [dataclasses.replace(p, max_tokens=steps + 1) for p in params]
    llm.generate(prompts, short, use_tqdm=False)  # warm-up of this shape
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with labelled_phases(), profile(activities=activities) as prof:
        sync()
        start = time.perf_counter()
        llm.generate(prompts, short, use_tqdm=False)
        sync()
        wall_ms = (time.perf_counter() - start) * 1e3
    report(prof, wall_ms, steps)


def report(prof: Any, wall_ms: float, steps: int) -> None:
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15))  # noqa: T201
    print(averages.table(sort_by="self_cuda_time_total", row_limit=15))  # noqa: T201
    phases = [e for e in averages if e.key.startswith("phase:")]
    print(f"{'phase':<32}{'calls':>7}{'mean ms':>10}{'total ms':>10}")  # noqa: T201
    for e in sorted(phases, key=lambda e: -e.cpu_time_total):
        mean = e.cpu_time_total / max(e.count, 1) / 1e3
        print(f"{e.key:<32}{e.count:>7}{mean:>10.3f}{e.cpu_time_total / 1e3:>10.2f}")  # noqa: T201
    busy_ms = gpu_busy_ms(prof)
    print(  # noqa: T201
        f"profiled run: {wall_ms:.1f} ms wall (~{steps + 1} steps incl. prefill, under the "
        f"profiler), GPU busy {busy_ms:.1f} ms, idle {100 * (1 - busy_ms / wall_ms):.1f}%"
    )


def gpu_busy_ms(prof: Any) -> float:
    """The union of the device's kernel and memcpy/memset intervals, in ms."""
    spans = []
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            spans.append((e.time_range.start, e.time_range.end))
    spans.sort()
    busy, end = 0.0, float("-inf")
    for lo, hi in spans:
        if hi <= end:
            continue
        busy += hi - max(lo, end)
        end = hi
    return busy / 1e3
