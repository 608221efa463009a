"""The multiprocessing executor: one worker process per rank on this host, forked
(or spawned, see mp_start.py).

Transport (the worker's side is mp_worker.py):

    driver ──MessageQueue──> rank 0 .. rank N-1    (method, args, reply mode): pickled
                                                    once, one copy into shared memory
    driver <──MessageQueue── output rank           a step's ModelRunnerOutput
    driver <──pipe────────── each rank             replies of set-up calls, errors

A step (`execute_model`) returns a future at once: the engine launches step N+1
before it reads step N's tokens (async scheduling), or, with pipeline parallelism,
keeps up to one batch per stage in flight (`max_concurrent_batches`; stage 0 runs
batch k+1 while stage 1 runs batch k). Replies come back in call order.
While it waits, the driver also watches the pipes and the process sentinels, so an
error or a dead worker (even by SIGKILL) is noticed within milliseconds instead of
leaving the driver blocked.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import socket
import time
import weakref
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from pagedllm.distributed.parallel_state import disable_nvlink_multicast
from pagedllm.distributed.shm_broadcast import MessageQueue, QueueTimeoutError
from pagedllm.executor.base import ExecutorDeadError
from pagedllm.executor.distributed import (
    DistributedExecutorBase,
    checked_output,
    rpc_timeout_s,
)
from pagedllm.executor.mp_start import (
    GUARD_HINT,
    in_spawn_bootstrap,
    warn_if_unguarded,
    worker_start_method,
)
from pagedllm.executor.mp_worker import (
    REPLY_ALL,
    REPLY_OUTPUT,
    SHUTDOWN,
    spin_seconds,
    worker_main,
)
from pagedllm.scheduler_output import ModelRunnerOutput, SchedulerOutput

logger = logging.getLogger(__name__)

_POLL_S = 1.0  # wake-up interval of the driver's wait (to check the overall timeout)
_STOP_GRACE_S = 5.0  # how long workers get to exit before they are terminated
_DEATH_GRACE_S = 1.0  # after a worker's error, how long a peer's death may take to show


def get_open_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the driver side -----------------------------------------------------------------------


def _ask_to_stop(procs: list[BaseProcess], conns: list[Connection], deadline: float) -> None:
    payload = pickle.dumps((SHUTDOWN, ()))
    for conn in conns:
        try:
            conn.send_bytes(payload)
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))


def _stop_processes(
    procs: list[BaseProcess], conns: list[Connection], queues: list[MessageQueue]
) -> None:
    """Ask politely, then terminate, then kill; never blocks longer than a few seconds.
    Rank 0 hosts the rendezvous store, so it leaves last: no rank loses the store
    while it still uses it (NCCL's TCPStore errors at exit). (A module function, so
    the finalizer holds no reference to the executor.)"""
    deadline = time.monotonic() + _STOP_GRACE_S
    _ask_to_stop(procs[1:], conns[1:], deadline)
    _ask_to_stop(procs[:1], conns[:1], deadline)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    for conn in conns:
        conn.close()
    for queue in queues:
        queue.close()
    queues.clear()


class MultiprocExecutor(DistributedExecutorBase):
    def _start_workers(self) -> None:
        if in_spawn_bootstrap():  # a spawned worker re-running an unguarded script
            raise RuntimeError(f"an LLM was created while a worker started: {GUARD_HINT}")
        disable_nvlink_multicast()  # inherited by the workers' environment
        self._start_method = worker_start_method()
        if self._start_method == "spawn":
            warn_if_unguarded()
        ctx = multiprocessing.get_context(self._start_method)
        init_method = f"tcp://127.0.0.1:{get_open_port()}"
        self._procs: list[BaseProcess] = []
        self._conns: list[Connection] = []
        self._futures: collections.deque[StepFuture] = collections.deque()
        spin_s = spin_seconds(self.config)
        self._broadcast_mq = MessageQueue.create(self.world_size, spin_s=spin_s)
        self._response_owner = MessageQueue.create(1, spin_s=spin_s)
        self._response_mq = MessageQueue.attach(self._response_owner.handle, 0, spin_s)
        queues = [self._response_mq, self._response_owner, self._broadcast_mq]
        self._finalizer = weakref.finalize(self, _stop_processes, self._procs, self._conns, queues)
        # Before multiprocessing's own exit hook (which would SIGTERM the daemons).
        atexit.register(self._finalizer)
        with _fork_environment(self._start_method):
            for rank in range(self.world_size):
                self._start_worker(ctx, rank, init_method)
        self._gather("start")
        logger.info(
            "started %d worker processes (%s): %s",
            self.world_size,
            self._start_method,
            self.worker_pids,
        )

    def _start_worker(self, ctx: Any, rank: int, init_method: str) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self._conns.append(parent_conn)
        inherited = list(self._conns) if self._start_method == "fork" else []
        proc = ctx.Process(
            target=worker_main,
            args=(self.config, rank, init_method, child_conn, inherited, self._queue_handles),
            name=f"pagedllm-worker-{rank}",
            daemon=True,
        )
        proc.start()
        child_conn.close()  # only the child holds it: its death gives the driver EOF
        self._procs.append(proc)

    @property
    def worker_pids(self) -> list[int]:
        return [int(proc.pid or -1) for proc in self._procs]

    @property
    def _queue_handles(self) -> tuple[Any, Any]:
        return self._broadcast_mq.handle, self._response_owner.handle

    def _run_on_workers(self, method: str, args: tuple[Any, ...]) -> list[Any]:
        self._broadcast(method, args, REPLY_ALL)
        return self._gather(method)

    def _broadcast(self, method: str, args: tuple[Any, ...], mode: int) -> None:
        try:
            self._broadcast_mq.enqueue(
                (method, args, mode), timeout=rpc_timeout_s(), check=lambda: self._watch(method)
            )
        except QueueTimeoutError as exc:
            raise ExecutorDeadError(f"{method}: {exc} (PAGEDLLM_RPC_TIMEOUT_S)") from exc

    def _watch(self, method: str) -> None:
        """While waiting on a queue: raise for a dead worker or an error reply."""
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        ready = wait([*self._conns, *sentinels], timeout=0)
        for sentinel, rank in sentinels.items():
            if sentinel in ready:
                raise self._died(rank, method)
        for rank, conn in enumerate(self._conns):
            if conn in ready:
                self._receive(rank, conn, method)  # raises for an error reply
                raise ExecutorDeadError(f"worker rank {rank} replied out of turn in {method}")

    # ---- steps: launched at once, awaited later ------------------------------------------

    def execute_model(self, scheduler_output: SchedulerOutput) -> StepFuture:  # type: ignore[override]
        with self._lock:
            self._raise_if_unusable()
            try:
                self._broadcast("execute_model", (scheduler_output,), REPLY_OUTPUT)
            except ExecutorDeadError as exc:
                self._die(exc)
                raise
            future = StepFuture(self)
            self._futures.append(future)
            return future

    def _wait_for(self, future: StepFuture) -> ModelRunnerOutput:
        """Read replies in call order until `future` has its own."""
        with self._lock:
            while future.output is None:
                self._raise_if_unusable()
                try:
                    output = self._response_mq.dequeue(
                        timeout=rpc_timeout_s(), check=lambda: self._watch("execute_model")
                    )
                except QueueTimeoutError as exc:
                    dead = ExecutorDeadError(f"execute_model: {exc} (PAGEDLLM_RPC_TIMEOUT_S)")
                    self._die(dead)
                    raise dead from exc
                except ExecutorDeadError as exc:
                    self._die(exc)
                    raise
                self._futures.popleft().output = checked_output(output, self.output_rank)
            return future.output

    def _is_done(self, future: StepFuture) -> bool:
        """Whether `future` has its output, reading the replies already there (never waits)."""
        with self._lock:
            while future.output is None and self._dead is None and self._response_mq.poll():
                output = self._response_mq.dequeue()
                try:
                    self._futures.popleft().output = checked_output(output, self.output_rank)
                except ExecutorDeadError as exc:
                    self._die(exc)
                    raise
            return future.output is not None

    def _gather(self, method: str) -> list[Any]:
        """One reply per rank, in rank order; waits on pipes and process sentinels."""
        results: list[Any] = [None] * self.world_size
        pending = dict(enumerate(self._conns))
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        timeout = rpc_timeout_s()
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            ready = wait([*pending.values(), *sentinels], timeout=_POLL_S)
            for rank, conn in list(pending.items()):
                if conn in ready:
                    results[rank] = self._receive(rank, conn, method)
                    del pending[rank]
            for sentinel, rank in sentinels.items():
                if sentinel in ready:  # any dead rank: the others' collectives cannot finish
                    raise self._died(rank, method)
            if deadline is not None and time.monotonic() > deadline:
                raise ExecutorDeadError(
                    f"worker rank(s) {sorted(pending)} did not answer {method} within "
                    f"{timeout:.0f} s (PAGEDLLM_RPC_TIMEOUT_S)"
                )
        return results

    def _receive(self, rank: int, conn: Connection, method: str) -> Any:
        try:
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died(rank, method) from exc
        if status != "ok":
            # A peer's death makes the others' collectives fail: blame the dead one.
            self._raise_if_any_died(method, _DEATH_GRACE_S)
            remote_error, text = value
            raise ExecutorDeadError(f"worker rank {rank} failed in {method}:\n{text}", remote_error)
        return value

    def _raise_if_any_died(self, method: str, within_s: float) -> None:
        dead = wait([proc.sentinel for proc in self._procs], timeout=within_s)
        for rank, proc in enumerate(self._procs):
            if proc.sentinel in dead:
                raise self._died(rank, method)

    def _died(self, rank: int, method: str) -> ExecutorDeadError:
        proc = self._procs[rank]
        proc.join(1.0)  # let the exit code settle
        hint = f" ({GUARD_HINT})" if method == "start" and self._start_method == "spawn" else ""
        return ExecutorDeadError(
            f"worker process of rank {rank} (pid {proc.pid}) died with exit code "
            f"{proc.exitcode} during {method}{hint}"
        )

    def _check_workers_alive(self) -> None:
        for rank, proc in enumerate(self._procs):
            if not proc.is_alive():
                raise self._died(rank, "check_health")

    def _stop_workers(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()  # runs _stop_processes once; later calls are no-ops
            atexit.unregister(finalizer)


@contextlib.contextmanager
def _fork_environment(method: str) -> Iterator[None]:
    """While forking: the tokenizers library must not use its thread pool in the
    children (they never tokenize; unset, it warns in each child)."""
    if method != "fork" or "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)


class StepFuture:
    """A step sent to the workers; `get()` waits for its ModelRunnerOutput."""

    def __init__(self, executor: MultiprocExecutor) -> None:
        self._executor = executor
        self.output: ModelRunnerOutput | None = None

    def get(self) -> ModelRunnerOutput:
        if self.output is not None:
            return self.output
        return self._executor._wait_for(self)

    def done(self) -> bool:
        """Whether `get()` would return at once (an error shows only in `get()`)."""
        return self.output is not None or self._executor._is_done(self)
