"""Driver logic shared by the multi-rank executors (multiprocessing and Ray).

The driver (the engine's process) holds no model. Every rank runs a Worker in its
own process (or Ray actor); each call is broadcast to all ranks, and every rank
answers:

    driver: execute_model(SchedulerOutput) -> a future, at once
      -> ranks 0 .. world-1 each run the step (tp all-reduces / pp send-recv among them)
      <- the output rank (tp rank 0 of the last pp stage) replies with its
         ModelRunnerOutput; future.get() waits for it

Steps reach every rank in call order and are answered in call order, so the engine
may launch step N+1 before it reads step N (async scheduling; with pipeline stages,
a batch per stage in flight: max_concurrent_batches).

Invariant: all ranks run the same sequence of calls, so their collectives match.
A worker that dies or raises breaks that invariant for good: the executor turns
it into ExecutorDeadError (naming the rank), stops every worker, and raises the
same error on every later call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.distributed.parallel_state import output_rank
from pagedllm.executor.base import Executor, ExecutorDeadError
from pagedllm.scheduler_output import ModelRunnerOutput

logger = logging.getLogger(__name__)


def rpc_timeout_s() -> float | None:
    """A bound on one broadcast call (PAGEDLLM_RPC_TIMEOUT_S; unset or 0: none). Dead
    workers are found without it; this catches a live worker that hangs."""
    value = float(os.environ.get("PAGEDLLM_RPC_TIMEOUT_S", "0") or 0)
    return value if value > 0 else None


@contextlib.contextmanager
def reraise_value_errors() -> Iterator[None]:
    """Set-up calls: a worker's ValueError (a model or cache that does not fit) reaches
    the user as the same ValueError the in-process executor would raise."""
    try:
        yield
    except ExecutorDeadError as exc:
        if isinstance(exc.remote_error, ValueError):
            raise ValueError(str(exc.remote_error)) from exc
        raise


def checked_output(output: Any, rank: int) -> ModelRunnerOutput:
    """A step's reply from the output rank, which must be its ModelRunnerOutput."""
    if not isinstance(output, ModelRunnerOutput):
        raise ExecutorDeadError(
            f"output rank {rank} returned {type(output).__name__}, not a ModelRunnerOutput"
        )
    return output


class DistributedExecutorBase(Executor):
    """One worker per rank; subclasses supply the transport (processes or actors)."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)  # the split was checked when the config was built
        pc = config.parallel_config
        self.world_size = pc.world_size
        # Whose ModelRunnerOutput is the step's result: tp rank 0 of the last stage.
        self.output_rank = output_rank(pc.tensor_parallel_size, pc.pipeline_parallel_size)
        self._dead: ExecutorDeadError | None = None
        self._is_shut_down = False
        # One call in flight at a time: replies are matched to calls by order.
        self._lock = threading.Lock()
        try:
            with reraise_value_errors():
                self._start_workers()
                self.collective_rpc("load_model")
        except BaseException:
            self.shutdown()
            raise

    # ---- what a transport provides -----------------------------------------------------

    @abstractmethod
    def _start_workers(self) -> None:
        """Start one worker per rank; return once every Worker exists (process group
        joined, model not loaded yet). Raise ExecutorDeadError if one fails."""

    @abstractmethod
    def _run_on_workers(self, method: str, args: tuple[Any, ...]) -> list[Any]:
        """Call Worker.`method`(*args) on every rank; results in rank order. Raise
        ExecutorDeadError (naming the rank) as soon as any rank dies or raises."""

    @abstractmethod
    def _check_workers_alive(self) -> None:
        """Raise ExecutorDeadError if a worker is gone (no message to the workers)."""

    @abstractmethod
    def _stop_workers(self) -> None:
        """Stop every worker (idempotent; must not hang)."""

    @property
    @abstractmethod
    def worker_pids(self) -> list[int]:
        """The OS process id of each rank's worker, in rank order."""

    # ---- the Executor interface ------------------------------------------------------------

    def collective_rpc(self, method: str, *args: Any) -> list[Any]:
        """Run Worker.`method` on every rank; the executor dies with the first failure."""
        with self._lock:
            self._raise_if_unusable()
            try:
                return self._run_on_workers(method, args)
            except ExecutorDeadError as exc:
                self._die(exc)
                raise

    def _raise_if_unusable(self) -> None:
        if self._dead is not None:
            raise self._dead
        if self._is_shut_down:
            raise ExecutorDeadError("the executor has been shut down")

    def _die(self, exc: ExecutorDeadError) -> None:
        logger.error("%s; stopping all workers", exc)
        self._dead = exc
        self._stop_workers()

    def determine_num_blocks(self) -> int:
        with reraise_value_errors():
            return int(min(self.collective_rpc("determine_num_blocks")))

    def initialize_kv_cache(self, num_blocks: int) -> None:
        with reraise_value_errors():
            self.collective_rpc("initialize_kv_cache", num_blocks)

    @property
    def max_concurrent_batches(self) -> int:
        """One batch per pipeline stage (PAGEDLLM_PP_BATCH_QUEUE=0: one batch at a time):
        both transports' steps are futures, answered in call order."""
        pp = self.config.parallel_config.pipeline_parallel_size
        if pp > 1 and os.environ.get("PAGEDLLM_PP_BATCH_QUEUE", "1") != "0":
            return pp
        return 1

    def check_health(self) -> None:
        self._raise_if_unusable()
        try:
            self._check_workers_alive()
        except ExecutorDeadError as exc:
            self._die(exc)
            raise

    def shutdown(self) -> None:
        if self._is_shut_down:
            return
        self._is_shut_down = True
        self._stop_workers()
