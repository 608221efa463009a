"""The custom all-reduce on 2+ GPUs of one host, one process per GPU: its sums against
the float32 rank-order reference (eager and replayed from a CUDA graph, one-shot and
two-shot), then microseconds per all-reduce for NCCL, one-shot and two-shot, each
timed as 50 back-to-back calls replayed from one CUDA graph (what a decode step pays).

    python scripts/gpu_custom_ar_check.py [--world 2]
    python scripts/gpu_custom_ar_check.py --same-gpu   # one GPU: sums only, ranks time-sliced
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES_KB = [8, 32, 128, 512, 1024, 2048, 4096, 8192]
CALLS_PER_GRAPH = 50


def _inputs(rank: int, numel: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed * 100 + rank)
    return torch.randn(numel, generator=g, device="cuda").to(torch.bfloat16)


def _check(car, rank: int, world: int) -> list[str]:  # type: ignore[no-untyped-def]
    from pagedllm.distributed.triton_custom_all_reduce import all_reduce_reference

    bad = []
    for seed, kb in enumerate([1, 8, 100, 1000, 3001, 8192]):
        numel = kb * 512 + seed  # ragged: not a multiple of the world size or a block
        numel = min(numel, car.max_size // 2)
        want = all_reduce_reference([_inputs(r, numel, seed) for r in range(world)])
        for one_shot_max in (car.max_size, 0):
            car.one_shot_max = one_shot_max
            got = car.all_reduce(_inputs(rank, numel, seed))
            if not torch.equal(got, want):
                bad.append(f"eager numel={numel} two_shot={one_shot_max == 0}")
            if not _graph_matches(car, rank, world, numel, seed):
                bad.append(f"graph numel={numel} two_shot={one_shot_max == 0}")
    return bad


def _graph_matches(car, rank: int, world: int, numel: int, seed: int) -> bool:  # type: ignore[no-untyped-def]
    from pagedllm.distributed.triton_custom_all_reduce import all_reduce_reference

    static_in = torch.zeros(numel, dtype=torch.bfloat16, device="cuda")
    car.all_reduce(static_in)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = car.all_reduce(car.all_reduce(static_in))
    ok = True
    for replay in range(3):
        x = _inputs(rank, numel, seed + 7 * replay)
        static_in.copy_(x)
        graph.replay()
        once = all_reduce_reference([_inputs(r, numel, seed + 7 * replay) for r in range(world)])
        twice = all_reduce_reference([once] * world)
        torch.cuda.synchronize()
        ok &= torch.equal(static_out, twice)
    return ok


def _time_graph(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, group) -> float:  # type: ignore[no-untyped-def]
    fn(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            fn(x)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    dist.barrier(group)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / (5 * CALLS_PER_GRAPH)


def _bench(car, group, rank: int) -> list[str]:  # type: ignore[no-untyped-def]
    rows = []
    for kb in SIZES_KB:
        x = torch.randn(kb * 512, device="cuda").to(torch.bfloat16)

        def nccl(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t, group=group)
            return t

        times = [_time_graph(nccl, x.clone(), group)]
        for one_shot_max in (car.max_size, 0):
            car.one_shot_max = one_shot_max
            times.append(_time_graph(car.all_reduce, x, group) if kb * 1024 <= car.max_size else 0)
        rows.append(f"{kb:>6} KB  nccl {times[0]:7.1f}  one-shot {times[1]:7.1f}  "
                    f"two-shot {times[2]:7.1f} us")  # fmt: skip
    return rows


def _run(rank: int, world: int, port: int, same_gpu: bool) -> None:
    from pagedllm.distributed.custom_all_reduce import CustomAllreduce

    device = torch.device("cuda", 0 if same_gpu else rank)
    torch.cuda.set_device(device)
    backend = "gloo" if same_gpu else "nccl"  # NCCL refuses two ranks on one GPU
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    group = dist.new_group(list(range(world)))
    car = CustomAllreduce(group, device)
    bad = _check(car, rank, world)
    print(f"CHECK rank {rank}: {'all identical' if not bad else 'MISMATCH ' + str(bad)}",
          flush=True)  # fmt: skip
    if same_gpu:
        dist.destroy_process_group()
        return
    rows = _bench(car, group, rank)
    if rank == 0:
        print("\n".join(rows), flush=True)
    dist.barrier(group)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--same-gpu", action="store_true")
    args = parser.parse_args()
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    if torch.cuda.device_count() > 1:
        print("peer access 0<->1:", torch.cuda.can_device_access_peer(0, 1), flush=True)
    port = 29000 + os.getpid() % 1000
    mp.spawn(_run, args=(args.world, port, args.same_gpu), nprocs=args.world)


if __name__ == "__main__":
    main()
