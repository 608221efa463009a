"""Does the first cuBLAS call at a new row count cost host time, or wait for the device?

For the LM head of the Llama-3.1-8B shape ([M, 4096] x [128256, 4096]^T) at row counts
never seen before in this process: queue ~100 ms of device work, then time the host
side of F.linear at M rows, and ask whether the queued work had already finished when
the call returned (a call that waits for the device is an implicit synchronization).
The second call at the same M is timed the same way for comparison.

    python scripts/first_call_cost.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def busy_queue(a: torch.Tensor, n: int = 40) -> torch.cuda.Event:
    """Queue n large products (about 100 ms on an H200); an event after them."""
    for _ in range(n):
        torch.mm(a, a)
    done = torch.cuda.Event()
    done.record()
    return done


def probe(m: int, w: torch.Tensor, a: torch.Tensor) -> tuple[float, bool]:
    x = torch.randn(m, w.shape[1], device="cuda", dtype=w.dtype)
    torch.cuda.synchronize()
    done = busy_queue(a)
    start = time.perf_counter()
    F.linear(x, w)
    host_ms = (time.perf_counter() - start) * 1e3
    waited = done.query()  # True: the queued work finished inside the call
    torch.cuda.synchronize()
    return host_ms, waited


def main() -> None:
    torch.manual_seed(0)
    w = torch.randn(128256, 4096, device="cuda", dtype=torch.bfloat16)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    busy_queue(a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    busy_queue(a).synchronize()
    print(f"queued work: {(time.perf_counter() - start) * 1e3:.1f} ms")
    print("| M | first call host ms | waited for device | second call host ms | waited |")
    print("|---|---|---|---|---|")
    for m in (13, 21, 29, 37, 100, 144, 7931):
        first, w1 = probe(m, w, a)
        second, w2 = probe(m, w, a)
        print(f"| {m} | {first:.2f} | {w1} | {second:.2f} | {w2} |")


if __name__ == "__main__":
    main()
