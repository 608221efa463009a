"""The custom all-reduce's kernels across real processes: two and four ranks map
each other's buffers (files under /dev/shm on the CPU, the kernels run under
Triton's interpreter) and must produce the float32 rank-order sum, on every rank,
call after call (the per-program counters and staging halves), one-shot and
two-shot in any order, for sizes that do not divide by the world size."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pagedllm.executor.multiproc import get_open_port

# (numel, two_shot) in call order: both kinds interleaved, ragged sizes, repeats.
CALLS = [(5, False), (4097, True), (4097, False), (1, True), (3000, True), (77, False)]
DTYPES = [torch.float32, torch.float16]


def _inputs(rank: int, numel: int, call: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * call + rank)
    return (torch.randn(numel, generator=g) * 4).to(dtype)


def _run_rank(rank: int, world: int, port: int, results: Any) -> None:
    from pagedllm.distributed.custom_all_reduce import CustomAllreduce
    from pagedllm.distributed.triton_custom_all_reduce import all_reduce_reference

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    group = dist.new_group(list(range(world)), backend="gloo")
    car = CustomAllreduce(group, torch.device("cpu"), max_size=64 * 1024, num_programs=3)
    mismatches = []
    for dtype in DTYPES:
        for call, (numel, two_shot) in enumerate(CALLS):
            car.one_shot_max = 0 if two_shot else car.max_size
            x = _inputs(rank, numel, call, dtype)
            before = x.clone()
            out = car.all_reduce(x)
            want = all_reduce_reference([_inputs(r, numel, call, dtype) for r in range(world)])
            if not torch.equal(out, want) or not torch.equal(x, before):
                mismatches.append((str(dtype), call, numel, two_shot))
    results.put((rank, mismatches, car.counter.tolist()))
    dist.barrier(group)
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_the_rank_order_sum(world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    shm_before = _car_files()
    port = get_open_port()
    procs = [ctx.Process(target=_run_rank, args=(r, world, port, results)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    got = sorted(results.get() for _ in range(world))
    calls = len(CALLS) * len(DTYPES)
    for rank, mismatches, counter in got:
        assert mismatches == [], f"rank {rank}: {mismatches}"
        assert counter == [calls] * 3  # every program counted every call
    assert _car_files() == shm_before  # the buffers' files are unlinked once mapped


def _car_files() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("pagedllm_car_")}
