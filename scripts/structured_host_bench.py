"""The host side of one constrained decode step, per phase, on the CPU (issue #17).

T1's constrained run (scripts/gpu_structured_bench.py) has 256 requests under a small
JSON schema over a synthetic 151,936-token byte-level tokenizer. Each step the engine
core, for every constrained request, advances its matcher with the sampled token
(scheduler.update_from_output -> check_grammar_stop), fills its bitmask row
(StructuredOutputManager.grammar_bitmask) and the runner copies and applies the mask
to the logits. This script builds the same tokenizer and 256 matchers, walks them into
varied states with random allowed tokens, and times each phase:

    advance     accept_token + is_terminated per request (the engine's loop before
                issue #17), llguidance's consume_token_par (LLExecutor, GIL released)
                with 1, 2, ... threads, and the engine's call now (accept_tokens)
    alloc       the [256, 4748] int32 bitmask (np.full) against a reused buffer and
                np.empty (the manager's now; pinned where the process drives a GPU)
    lookup      the 256 grammars read through their Futures against the cached reads
    fill        one row at a time from Python, fill_next_token_bitmask_par with
                1, 2, ... threads (1 thread / rows = the per-thread cost per row), and
                the engine's call (GuidanceBackend.fill_bitmask)
    apply       the runner's apply_grammar_bitmask_ on [256, 151936] float32 logits (CPU)

Costs are printed per step and per request; a single thread's figure scales to the
GPU box's 16 cores by dividing by the threads used.

    python scripts/structured_host_bench.py [--rows 256] [--steps 20] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from gpu_structured_bench import SCHEMA, write_synthetic_tokenizer  # noqa: E402

VOCAB = 151936


def tokenizer_dir(vocab_size: int) -> str:
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pagedllm-synthtok-{vocab_size}")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        write_synthetic_tokenizer(path, vocab_size)
    return path


def make_backend(vocab_size: int) -> Any:
    from transformers import AutoTokenizer

    from pagedllm.structured_output.backend_guidance import GuidanceBackend

    tok = AutoTokenizer.from_pretrained(tokenizer_dir(vocab_size))
    return GuidanceBackend(tok, vocab_size, [tok.eos_token_id], disable_any_whitespace=False)


def random_allowed(row: np.ndarray, rng: np.random.Generator, vocab_size: int) -> int:
    bits = np.unpackbits(row.view(np.uint8), bitorder="little")[:vocab_size]
    allowed = np.flatnonzero(bits)
    return int(rng.choice(allowed))


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of fn over `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def walk(backend: Any, grammars: list[Any], steps: int, seed: int) -> None:
    """Advance each grammar by `steps` random allowed tokens (varied states)."""
    rng = np.random.default_rng(seed)
    mask = np.full((len(grammars), backend_words()), -1, dtype=np.int32)
    for _ in range(steps):
        backend.fill_bitmask([(g, i) for i, g in enumerate(grammars)], mask)
        for i, g in enumerate(grammars):
            if not g.is_terminated():
                g.accept_token(random_allowed(mask[i], rng, VOCAB))


def backend_words() -> int:
    return (VOCAB + 31) // 32


def bench_step(backend: Any, grammars: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    import llguidance
    import llguidance.numpy as llnp
    import torch

    from pagedllm.layers.grammar_bitmask import GrammarBitmask, apply_grammar_bitmask_

    rows, words = len(grammars), backend_words()
    mask = np.full((rows, words), -1, dtype=np.int32)
    res: dict[str, Any] = {}
    res["alloc_np_full_ms"] = timed(lambda: np.full((rows, words), -1, np.int32), 20) * 1e3
    res["refill_reused_ms"] = timed(lambda: mask.fill(-1), 20) * 1e3
    res["alloc_np_empty_ms"] = timed(lambda: np.empty((rows, words), np.int32), 20) * 1e3
    res.update(bench_lookup(grammars))
    pairs = [(g.matcher, i) for i, g in enumerate(grammars)]

    def serial_fill() -> None:
        for m, i in pairs:
            llnp.fill_next_token_bitmask(m, mask, i)

    res["fill_serial_ms"] = timed(serial_fill, args.repeat) * 1e3
    res["fill_per_row_us"] = res["fill_serial_ms"] * 1e3 / rows
    for n in args.threads:
        ex = llguidance.LLExecutor(num_threads=n)
        res[f"fill_par_{n}t_ms"] = (
            timed(lambda ex=ex: llnp.fill_next_token_bitmask_par(ex, pairs, mask), args.repeat)
            * 1e3
        )
    res["fill_engine_ms"] = (
        timed(lambda: backend.fill_bitmask([(g, i) for i, g in enumerate(grammars)], mask), 5) * 1e3
    )  # the engine's call: LLExecutor's default threads (80% of the cores)
    res.update(bench_advance(grammars, mask, args))
    logits = torch.randn(rows, VOCAB)
    gm = GrammarBitmask.build(list(range(rows)), mask, torch.device("cpu"))
    res["apply_cpu_ms"] = timed(lambda: apply_grammar_bitmask_(logits.clone(), gm), 5) * 1e3
    res["clone_logits_ms"] = timed(lambda: logits.clone(), 5) * 1e3
    return res


def bench_lookup(grammars: list[Any]) -> dict[str, float]:
    """The engine reads each request's grammar twice a step (the bitmask rows, the
    advance): through its Future (a lock per call) against the cached attribute."""
    from concurrent.futures import Future

    from pagedllm.sampling_params import StructuredOutputsParams
    from pagedllm.structured_output.request import StructuredOutputRequest

    sors = []
    for g in grammars:
        future: Future[Any] = Future()
        future.set_result(g)
        sors.append(StructuredOutputRequest(StructuredOutputsParams(json_object=True), future))

    def via_future() -> None:
        for sor in sors:
            f = sor.future
            if f.done() and f.exception() is None:
                f.result()

    return {
        "grammar_lookup_future_ms": timed(via_future, 20) * 1e3,
        "grammar_lookup_cached_ms": timed(lambda: [sor.grammar for sor in sors], 20) * 1e3,
    }


def bench_advance(grammars: list[Any], mask: np.ndarray, args: argparse.Namespace) -> dict:
    """Advance each matcher by one allowed token and roll it back, timed."""
    import llguidance
    import llguidance.numpy as llnp

    rng = np.random.default_rng(1)
    pairs = [(g.matcher, i) for i, g in enumerate(grammars)]
    llnp.fill_next_token_bitmask_par(llguidance.LLExecutor(), pairs, mask)
    tokens = [random_allowed(mask[i], rng, VOCAB) for i in range(len(grammars))]
    live = [(g, t) for g, t in zip(grammars, tokens) if not g.is_terminated()]

    def engine_loop() -> None:  # check_grammar_stop's calls, one request at a time
        for g, t in live:
            g.accept_token(t)
            g.is_terminated()

    def rollback() -> None:
        for g, _ in live:
            g.matcher.rollback(1)

    res: dict[str, Any] = {}
    res["advance_serial_ms"] = _timed_with_undo(engine_loop, rollback, args.repeat) * 1e3
    res["advance_per_row_us"] = res["advance_serial_ms"] * 1e3 / max(1, len(live))
    res["advance_engine_ms"] = (
        _timed_with_undo(lambda: type(live[0][0]).accept_tokens(live), rollback, args.repeat) * 1e3
    )  # check_grammar_stops' call (consume_token_par from 16 rows)
    batch = [(g.matcher, t) for g, t in live]
    for n in args.threads:
        ex = llguidance.LLExecutor(num_threads=n)
        res[f"advance_par_{n}t_ms"] = (
            _timed_with_undo(lambda ex=ex: ex.consume_token_par(batch), rollback, args.repeat) * 1e3
        )
    return res


def _timed_with_undo(fn: Callable[[], Any], undo: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        undo()
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--walk", type=int, default=12, help="random tokens before timing")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    start = time.perf_counter()
    backend = make_backend(VOCAB)
    setup_s = time.perf_counter() - start
    from pagedllm.structured_output.backend_types import StructuredOutputKind

    spec = json.dumps(SCHEMA)
    grammars = [backend.compile_grammar(StructuredOutputKind.JSON, spec) for _ in range(args.rows)]
    random.seed(0)
    walk(backend, grammars, args.walk, seed=0)
    res = bench_step(backend, grammars, args)
    res = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}
    res.update(rows=args.rows, cpus=os.cpu_count(), setup_s=round(setup_s, 1))
    print(json.dumps(res, indent=2))  # noqa: T201 (a script's result)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
