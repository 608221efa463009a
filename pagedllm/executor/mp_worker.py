"""The worker process of the multiprocessing executor: build the Worker, then serve
the calls the driver broadcasts.

Channels of one worker (see multiproc.py for the driver's side):

    broadcast MessageQueue  driver -> every rank   (method, args, reply mode), once
    response MessageQueue   output rank -> driver  execute_model's ModelRunnerOutput
    pipe (one per rank)     rank <-> driver        replies to REPLY_ALL calls, errors,
                                                   and the driver's shutdown / death (EOF)

Steps (REPLY_OUTPUT) are answered by the output rank only, and one step late when
the next is already waiting: step N+1 is launched before step N's tokens are
awaited, so the device never idles while the host sends a reply. Any other call
first sends the reply of the step in flight, so replies keep the calls' order.
"""

from __future__ import annotations

import logging
import pickle
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.distributed.shm_broadcast import Handle, MessageQueue
from pagedllm.gc_utils import prepare_serving_process

REPLY_ALL, REPLY_OUTPUT = 0, 1  # every rank answers on its pipe / the output rank on the queue
SHUTDOWN = "__shutdown__"

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """The driver said stop, or is gone."""


def error_payload(exc: BaseException) -> tuple[BaseException | None, str]:
    """(the exception if it pickles, its traceback text)."""
    try:
        pickle.dumps(exc)
    except Exception:
        return None, traceback.format_exc()
    return exc, traceback.format_exc()


class WorkerServer:
    def __init__(
        self,
        worker: Any,
        conn: Connection,
        broadcast: MessageQueue,
        response: MessageQueue | None,
    ) -> None:
        self.worker = worker
        self.conn = conn
        self.broadcast = broadcast
        self.response = response  # only on the output rank
        self.pending: Any = None  # the launched step whose reply is not sent yet

    def run(self) -> None:
        try:
            while True:
                method, args, mode = self._next()
                if method == SHUTDOWN:
                    raise _Stop
                if method == "execute_model" and mode == REPLY_OUTPUT:
                    self._execute(args)
                else:
                    self._flush()
                    self._call(method, args, mode)
        except _Stop:
            return

    def _next(self) -> tuple[str, tuple[Any, ...], int]:
        if self.pending is not None and not self.broadcast.poll():
            self._flush()  # nothing to launch behind it: send its tokens now
        message: tuple[str, tuple[Any, ...], int] = self.broadcast.dequeue(check=self._control)
        return message

    def _control(self) -> None:
        """Called while waiting: a shutdown, or the end of file of a dead driver."""
        if not self.conn.poll():
            return
        try:
            method, _ = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            raise _Stop from None
        if method == SHUTDOWN:
            raise _Stop

    def _execute(self, args: tuple[Any, ...]) -> None:
        try:
            launched = self.worker.execute_model_async(*args)
        except Exception as exc:
            self._send(("error", error_payload(exc)))
            return
        self._flush()
        self.pending = launched
        if getattr(launched, "event", None) is None:
            self._flush()  # computed already (the CPU): nothing to overlap, reply now

    def _flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None:
            return
        try:
            output = pending.get()
        except Exception as exc:
            self._send(("error", error_payload(exc)))
            return
        assert self.response is not None
        self.response.enqueue(output, check=self._control)

    def _call(self, method: str, args: tuple[Any, ...], mode: int) -> None:
        try:
            result = getattr(self.worker, method)(*args)
        except Exception as exc:
            self._send(("error", error_payload(exc)))
            return
        if mode == REPLY_ALL:
            self._send(("ok", result))

    def _send(self, reply: tuple[str, Any]) -> None:
        try:
            self.conn.send(reply)
        except OSError:
            raise _Stop from None  # the driver is gone


def worker_main(
    config: EngineConfig,
    rank: int,
    init_method: str,
    conn: Connection,
    inherited: list[Connection],
    queues: tuple[Handle, Handle],
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
        spin_s = spin_seconds(config)
        broadcast = MessageQueue.attach(queues[0], rank, spin_s)
        response = MessageQueue.attach_writer(queues[1], spin_s) if worker.is_output_rank else None
    except BaseException as exc:
        conn.send(("error", error_payload(exc)))
        return
    prepare_serving_process(f"worker {rank}")
    conn.send(("ok", None))
    try:
        WorkerServer(worker, conn, broadcast, response).run()
    finally:
        try:
            worker.shutdown()
        except Exception as exc:  # at exit: a line, not a traceback
            logger.warning("rank %d: shutdown failed: %s", rank, exc)


def spin_seconds(config: EngineConfig) -> float:
    """How long a side waiting on a queue spins before it naps: on GPUs the host must
    answer within microseconds; on the CPU spinning takes cores from the compute."""
    import os

    value = os.environ.get("PAGEDLLM_SHM_SPIN_S")
    if value:
        return float(value)
    return 1.0 if config.device_config.device.type == "cuda" else 0.0
