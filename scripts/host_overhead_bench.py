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
- transport (`--transport-only`, or always after the engine lines): one step's
  SchedulerOutput of `--seqs` decode requests broadcast to `--tp` reader processes
  and one reply back, over one pipe per reader (the old transport) and over the
  shared-memory MessageQueue; and the encode+decode cost of that SchedulerOutput
  with pickle protocol 5 and with msgspec (msgpack).
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
from pagedllm.scheduler_output import ModelRunnerOutput, ScheduledRequest, SchedulerOutput  # noqa: E402

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


def decode_step(seqs: int) -> SchedulerOutput:
    sp = SamplingParams(temperature=0.0, max_tokens=256)
    scheduled = [
        ScheduledRequest(f"req-{i}", [i % 500], 100 + i, list(range(i * 8, i * 8 + 8)), 101 + i, sp)
        for i in range(seqs)
    ]
    return SchedulerOutput(scheduled, seqs)


def reply(seqs: int) -> ModelRunnerOutput:
    return ModelRunnerOutput([f"req-{i}" for i in range(seqs)], list(range(seqs)))


def pipe_reader(conn: Connection, seqs: int, answer: bool) -> None:
    out = reply(seqs)
    while True:
        msg = pickle.loads(conn.recv_bytes())
        if msg is None:
            return
        conn.send(out if answer else None)  # the old path: every rank answers


def pipe_round_trip_us(tp: int, seqs: int) -> float:
    ctx = multiprocessing.get_context("fork")
    pairs = [ctx.Pipe(duplex=True) for _ in range(tp)]
    procs = [
        ctx.Process(target=pipe_reader, args=(child, seqs, r == 0), daemon=True)
        for r, (_, child) in enumerate(pairs)
    ]
    for proc in procs:
        proc.start()
    step = decode_step(seqs)
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


def shm_round_trip_us(tp: int, seqs: int, spin_s: float) -> float:
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
    step = decode_step(seqs)
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


def serialization_us(seqs: int) -> tuple[float, float]:
    import msgspec

    step = decode_step(seqs)
    encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(SchedulerOutput)

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(200):
            fn()
        return (time.perf_counter() - start) / 200 * 1e6

    pickled = timed(lambda: pickle.loads(pickle.dumps(step, protocol=5)))
    msgpacked = timed(lambda: decoder.decode(encoder.encode(step)))
    return pickled, msgpacked


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
    print(f"transport, pipes: {pipe_round_trip_us(args.tp, args.seqs):.0f} us/step")
    for spin_s in (0.0, 0.01):
        us = shm_round_trip_us(args.tp, args.seqs, spin_s)
        print(f"transport, MessageQueue (spin {spin_s} s): {us:.0f} us/step")
    pickled, msgpacked = serialization_us(args.seqs)
    print(f"SchedulerOutput encode+decode: pickle 5 {pickled:.0f} us, msgspec {msgpacked:.0f} us")


if __name__ == "__main__":
    main()
