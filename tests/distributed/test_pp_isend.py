"""`pipeline_isend` between two gloo ranks: the sender posts a step's activations and
goes on before the receiver receives them; the receiver gets every step, in order."""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import torch

from pagedllm.distributed import parallel_state as ps
from pagedllm.executor.multiproc import get_open_port

STEPS = 6


def step_tensors(step: int) -> list[torch.Tensor]:
    """A step's hidden states and residual (sizes change from step to step)."""
    rows = 3 + 5 * (step % 3)
    return [torch.full((rows, 8), float(step)), torch.full((rows, 8), -float(step))]


def rank_main(rank: int, init_method: str, conn: Connection, posted: Event) -> None:
    ps.init_distributed_environment(2, rank, init_method, "gloo")
    ps.initialize_model_parallel(1, 2, "gloo")
    try:
        if rank == 0:
            send_steps(posted)
        else:
            # Receive only once the sender has posted a step: a send that waited for
            # its receiver would never let the sender get there.
            conn.send(posted.wait(30) and receive_steps())
    finally:
        ps.destroy_distributed_environment()


def send_steps(posted: Event) -> None:
    """Post every step like the model runner: wait for the step before (gloo's send
    completes once the receiver has it), then post."""
    pending: tuple[list[torch.distributed.Work], list[torch.Tensor]] = ([], [])
    for step in range(STEPS):
        for work in pending[0]:
            work.wait()
        tensors = step_tensors(step)
        pending = (ps.pipeline_isend(tensors), tensors)
        posted.set()  # after the first step: posting did not wait for the receiver
    for work in pending[0]:
        work.wait()


def receive_steps() -> bool:
    for step in range(STEPS):
        expected = step_tensors(step)
        received = [torch.empty_like(t) for t in expected]
        ps.pipeline_recv(received)
        if not all(torch.equal(a, b) for a, b in zip(received, expected)):
            return False
    return True


def test_isend_posts_without_waiting_and_keeps_order() -> None:
    ctx = multiprocessing.get_context("fork")
    init_method = f"tcp://127.0.0.1:{get_open_port()}"
    receiver, sender = ctx.Pipe(duplex=False)
    posted = ctx.Event()
    procs = [
        ctx.Process(target=rank_main, args=(rank, init_method, sender, posted)) for rank in range(2)
    ]
    for proc in procs:
        proc.start()
    try:
        assert receiver.poll(60), "no answer from the receiving rank"
        assert receiver.recv() is True  # posted before the receiver took it; all in order
    finally:
        for proc in procs:
            proc.join(30)
    assert all(proc.exitcode == 0 for proc in procs)
