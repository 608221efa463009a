"""The multiprocessing executor: one worker process per rank on this host, forked
(or spawned, see mp_start.py).

Transport: one duplex pipe per worker. A call is pickled once and written to every
pipe; each worker answers ("ok", result) or ("error", traceback). The driver waits
on the pipes *and* the process sentinels together, so a worker that dies (even by
SIGKILL) is noticed at once instead of leaving the driver blocked on a read:

    driver ──(method, args)──> rank 0 .. rank N-1      (same bytes to every pipe)
    driver <──("ok", result)── every rank              (None except the output rank)
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import time
import traceback
import weakref
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.distributed.parallel_state import disable_nvlink_multicast
from pagedllm.executor.base import ExecutorDeadError
from pagedllm.executor.distributed import DistributedExecutorBase, cuda_device_count, rpc_timeout_s
from pagedllm.executor.mp_start import (
    GUARD_HINT,
    in_spawn_bootstrap,
    warn_if_unguarded,
    worker_start_method,
)

logger = logging.getLogger(__name__)

_SHUTDOWN = "__shutdown__"
_POLL_S = 1.0  # wake-up interval of the driver's wait (to check the overall timeout)
_STOP_GRACE_S = 5.0  # how long workers get to exit before they are terminated
_DEATH_GRACE_S = 1.0  # after a worker's error, how long a peer's death may take to show


def get_open_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the worker process --------------------------------------------------------------


def _serve(worker: Any, conn: Connection) -> None:
    """Answer calls until the driver says stop or goes away."""
    while True:
        try:
            method, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the driver is gone
        if method == _SHUTDOWN:
            return
        try:
            reply: tuple[str, Any] = ("ok", getattr(worker, method)(*args))
        except Exception as exc:
            reply = ("error", _error_payload(exc))
        try:
            conn.send(reply)
        except OSError:
            return  # the driver is gone


def _error_payload(exc: BaseException) -> tuple[BaseException | None, str]:
    """(the exception if it pickles, its traceback text)."""
    try:
        pickle.dumps(exc)
    except Exception:
        return None, traceback.format_exc()
    return exc, traceback.format_exc()


def _worker_main(
    config: EngineConfig,
    rank: int,
    init_method: str,
    conn: Connection,
    inherited: list[Connection],
) -> None:
    """Entry point of a worker: build the Worker, say ready, serve calls."""
    from pagedllm.worker.worker import Worker

    # A forked child holds copies of the driver's ends of the pipes; closed here, so
    # that the driver's death is an end of file on every worker's pipe.
    for other in inherited:
        other.close()
    # Ctrl-C reaches the whole process group; the driver decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler inherited by fork
    logging.basicConfig(
        level=logging.WARNING, format=f"(rank {rank}) %(levelname)s %(name)s: %(message)s"
    )
    try:
        worker = Worker(config, rank=rank, local_rank=rank, distributed_init_method=init_method)
    except BaseException as exc:
        conn.send(("error", _error_payload(exc)))
        return
    conn.send(("ok", None))
    try:
        _serve(worker, conn)
    finally:
        try:
            worker.shutdown()
        except Exception as exc:  # at exit: a line, not a traceback
            logging.getLogger(__name__).warning("rank %d: shutdown failed: %s", rank, exc)


# ---- the driver side -----------------------------------------------------------------------


def _ask_to_stop(procs: list[BaseProcess], conns: list[Connection], deadline: float) -> None:
    payload = pickle.dumps((_SHUTDOWN, ()))
    for conn in conns:
        try:
            conn.send_bytes(payload)
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))


def _stop_processes(procs: list[BaseProcess], conns: list[Connection]) -> None:
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
        self._finalizer = weakref.finalize(self, _stop_processes, self._procs, self._conns)
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
            target=_worker_main,
            args=(self.config, rank, init_method, child_conn, inherited),
            name=f"pagedllm-worker-{rank}",
            daemon=True,
        )
        proc.start()
        child_conn.close()  # only the child holds it: its death gives the driver EOF
        self._procs.append(proc)

    @property
    def worker_pids(self) -> list[int]:
        return [int(proc.pid or -1) for proc in self._procs]

    def _num_devices_available(self) -> int | None:
        return cuda_device_count()

    def _run_on_workers(self, method: str, args: tuple[Any, ...]) -> list[Any]:
        payload = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in enumerate(self._conns):
            try:
                conn.send_bytes(payload)
            except OSError as exc:
                raise self._died(rank, method) from exc
        return self._gather(method)

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
