"""Host overhead per step with several workers, on the CPU (a tiny model, so a step is
almost all overhead: scheduling, transport to the workers, the reply).

    OMP_NUM_THREADS=1 python scripts/host_overhead_bench.py [--tp 2] [--seqs 64]
        [--tokens 64] [--async] [--transport-only | --engine-only]

Before/after a change of the transport: run `--engine-only` with PYTHONPATH pointing
at each checkout, interleaved (the machine's load moves).

Prints:
- engine: ms per decode step of `--seqs` requests decoding together, with
  tensor_parallel_size=1 and `--tp` (the difference is the multi-process tax plus
  the gloo all-reduces);
- transport (`--transport-only`, or always after the engine lines): one steady
  decode step of `--seqs` requests (made by a real Scheduler) broadcast to `--tp`
  reader processes and one reply back, over one pipe per reader (the old transport)
  and over the shared-memory MessageQueue, each in two forms: the SchedulerOutput
  as sent (deltas: worker/request_state.py) and the full form sent before (every row
  whole: SamplingParams and block table); and their pickled sizes and encode+decode
  cost with pickle protocol 5 (msgspec: the full rows, for comparison).
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pagedllm.sampling_params import SamplingParams  # noqa: E402
from pagedllm.scheduler_output import ModelRunnerOutput, ScheduledRequest  # noqa: E402

ROUNDS = 2000


def engine_ms_per_step(tp: int, seqs: int, tokens: int, async_scheduling: bool) -> float:
    from conftest import save_tiny_llama

    from pagedllm import LLM

    model = save_tiny_llama(Path(tempfile.mkdtemp()))
    llm = LLM(
        model=model,
        device="cpu",
        dtype="float32",
        skip_tokenizer_init=True,
        tensor_parallel_size=tp,
        max_num_seqs=seqs,
        async_scheduling=async_scheduling or None,
    )
    prompts = [{"prompt_token_ids": [(i * 7 + j) % 500 + 1 for j in range(8)]} for i in range(seqs)]
    sp = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, detokenize=False)
    llm.generate(prompts, sp, use_tqdm=False)  # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        llm.generate(prompts, sp, use_tqdm=False)
        best = min(best, (time.perf_counter() - start) / (tokens + 1))
    llm.llm_engine.shutdown()
    return best * 1e3


def decode_step(seqs: int, full: bool = False) -> Any:
    """A steady decode step of `seqs` requests (100 + i prompt tokens, block size 16)
    as the Scheduler makes it: the SchedulerOutput sent to the workers, or (`full`)
    its rows whole, the form sent before the deltas."""
    from pagedllm.config import SchedulerConfig
    from pagedllm.core.kv_cache_manager import KVCacheManager
    from pagedllm.core.request import Request
    from pagedllm.core.scheduler import Scheduler

    config = SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=1 << 16, max_model_len=512)
    sched = Scheduler(config, KVCacheManager(seqs * 32, 16, enable_caching=False))
    for i in range(seqs):  # each request its own SamplingParams, as the front end makes them
        sp = SamplingParams(temperature=0.0, max_tokens=256)
        sched.add_request(Request(f"req-{i}", [(i + j) % 500 for j in range(100 + i)], sp))
    for _ in range(2):  # the prefill, then a decode step
        out = sched.schedule()
        tokens = [i % 500 if s.samples else None for i, s in enumerate(out.scheduled)]
        sched.update_from_output(out, ModelRunnerOutput(list(out.num_scheduled_tokens), tokens))
    out = sched.schedule()
    return out.scheduled if full else out


def reply(seqs: int) -> ModelRunnerOutput:
    return ModelRunnerOutput([f"req-{i}" for i in range(seqs)], list(range(seqs)))


def pipe_reader(conn: Connection, seqs: int, answer: bool) -> None:
    out = reply(seqs)
    while True:
        msg = pickle.loads(conn.recv_bytes())
        if msg is None:
            return
        conn.send(out if answer else None)  # the old path: every rank answers


def pipe_round_trip_us(tp: int, seqs: int, full: bool) -> float:
    ctx = multiprocessing.get_context("fork")
    pairs = [ctx.Pipe(duplex=True) for _ in range(tp)]
    procs = [
        ctx.Process(target=pipe_reader, args=(child, seqs, r == 0), daemon=True)
        for r, (_, child) in enumerate(pairs)
    ]
    for proc in procs:
        proc.start()
    step = decode_step(seqs, full)
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        payload = pickle.dumps(("execute_model", (step,)), protocol=pickle.HIGHEST_PROTOCOL)
        for parent, _ in pairs:
            parent.send_bytes(payload)
        for parent, _ in pairs:
            parent.recv()
        times.append(time.perf_counter() - start)
    for parent, _ in pairs:
        parent.send_bytes(pickle.dumps(None))
    for proc in procs:
        proc.join()
    return statistics.median(times) * 1e6


def shm_reader(handle: Any, response: Any, rank: int, seqs: int, spin_s: float) -> None:
    from pagedllm.distributed.shm_broadcast import MessageQueue

    queue = MessageQueue.attach(handle, rank, spin_s)
    writer = MessageQueue.attach_writer(response, spin_s) if rank == 0 else None
    out = reply(seqs)
    while True:
        msg = queue.dequeue()
        if msg is None:
            return
        if writer is not None:
            writer.enqueue(out)  # the new path: only the output rank answers


def shm_round_trip_us(tp: int, seqs: int, spin_s: float, full: bool) -> float:
    from pagedllm.distributed.shm_broadcast import MessageQueue

    ctx = multiprocessing.get_context("fork")
    queue = MessageQueue.create(tp, spin_s=spin_s)
    response = MessageQueue.create(1, spin_s=spin_s)
    procs = [
        ctx.Process(
            target=shm_reader, args=(queue.handle, response.handle, r, seqs, spin_s), daemon=True
        )
        for r in range(tp)
    ]
    for proc in procs:
        proc.start()
    back = MessageQueue.attach(response.handle, 0, spin_s)
    step = decode_step(seqs, full)
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        queue.enqueue(("execute_model", (step,)))
        back.dequeue()
        times.append(time.perf_counter() - start)
    queue.enqueue(None)
    for proc in procs:
        proc.join()
    back.close()
    queue.close()
    response.close()
    return statistics.median(times) * 1e6


def serialization_us(seqs: int) -> tuple[float, float, float]:
    """(pickle 5 of the deltas, of the full rows, msgspec of the full rows), us."""
    import msgspec

    step, rows = decode_step(seqs), decode_step(seqs, full=True)
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(list[ScheduledRequest])

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(200):
            fn()
        return (time.perf_counter() - start) / 200 * 1e6

    pickled = timed(lambda: pickle.loads(pickle.dumps(step, protocol=5)))
    pickled_full = timed(lambda: pickle.loads(pickle.dumps(rows, protocol=5)))
    msgpacked = timed(lambda: decoder.decode(encoder.encode(rows)))
    return pickled, pickled_full, msgpacked


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--async", dest="async_scheduling", action="store_true")
    parser.add_argument("--transport-only", action="store_true")
    parser.add_argument("--engine-only", action="store_true")
    args = parser.parse_args()
    if not args.transport_only:
        for tp in (1, args.tp):
            ms = engine_ms_per_step(tp, args.seqs, args.tokens, args.async_scheduling and tp > 1)
            print(f"engine tp={tp}: {ms:.2f} ms/step ({args.seqs} requests decoding)")
    if args.engine_only:  # also runs on a checkout without the MessageQueue (before/after)
        return
    sizes = [len(pickle.dumps(decode_step(args.seqs, f), protocol=5)) for f in (False, True)]
    print(f"decode step pickled: deltas {sizes[0]} bytes, full rows {sizes[1]} bytes")
    for full, form in ((False, "deltas"), (True, "full rows")):
        us = pipe_round_trip_us(args.tp, args.seqs, full)
        print(f"transport, pipes, {form}: {us:.0f} us/step")
        for spin_s in (0.0, 0.01):
            us = shm_round_trip_us(args.tp, args.seqs, spin_s, full)
            print(f"transport, MessageQueue (spin {spin_s} s), {form}: {us:.0f} us/step")
    pickled, pickled_full, msgpacked = serialization_us(args.seqs)
    print(
        f"encode+decode: pickle 5 deltas {pickled:.0f} us, full rows {pickled_full:.0f} us;"
        f" msgspec full rows {msgpacked:.0f} us"
    )


if __name__ == "__main__":
    main()
