"""Driver logic shared by the multi-rank executors (multiprocessing and Ray).

The driver (the engine's process) holds no model. Every rank runs a Worker in its
own process (or Ray actor); each call is broadcast to all ranks, and every rank
answers:

    driver: execute_model(SchedulerOutput)
      -> ranks 0 .. world-1 each run the step (tp all-reduces / pp send-recv among them)
      <- each rank replies; only the output rank (tp rank 0 of the last pp stage)
         replies with its ModelRunnerOutput, the others with None

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

import torch

from pagedllm.config import EngineConfig
from pagedllm.distributed.parallel_state import output_rank
from pagedllm.executor.base import Executor, ExecutorDeadError
from pagedllm.scheduler_output import ModelRunnerOutput, SchedulerOutput

logger = logging.getLogger(__name__)


def rpc_timeout_s() -> float | None:
    """A bound on one broadcast call (PAGEDLLM_RPC_TIMEOUT_S; unset or 0: none). Dead
    workers are found without it; this catches a live worker that hangs."""
    value = float(os.environ.get("PAGEDLLM_RPC_TIMEOUT_S", "0") or 0)
    return value if value > 0 else None


def _check_divisible(name: str, value: int, tp: int) -> None:
    if value % tp != 0:
        raise ValueError(
            f"{name} ({value}) must be divisible by tensor_parallel_size ({tp}); "
            f"choose a tensor_parallel_size that divides it"
        )


def _intermediate_size(hf_config: Any) -> int | None:
    for key in ("intermediate_size", "ffn_dim", "n_inner"):
        value = getattr(hf_config, key, None)
        if value:
            return int(value)
    return None


def verify_tensor_parallel(config: EngineConfig) -> None:
    """The checks the TP-aware layers would fail on, made before any worker starts."""
    mc, tp = config.model_config, config.parallel_config.tensor_parallel_size
    _check_divisible("num_attention_heads", mc.num_attention_heads, tp)
    kv = mc.num_kv_heads
    # tp > kv heads: each kv head is replicated on tp / kv ranks (needs kv | tp).
    if tp >= kv and tp % kv != 0:
        raise ValueError(
            f"tensor_parallel_size ({tp}) must be a multiple of num_key_value_heads ({kv}) "
            f"when it is larger"
        )
    if tp < kv:
        _check_divisible("num_key_value_heads", kv, tp)
    inter = _intermediate_size(mc.hf_config)
    if inter is not None:
        _check_divisible("intermediate_size", inter, tp)


def verify_pipeline_parallel(config: EngineConfig) -> None:
    from pagedllm.model_loader.registry import get_model_class

    mc, pp = config.model_config, config.parallel_config.pipeline_parallel_size
    if pp == 1:
        return
    if pp > mc.num_layers:
        raise ValueError(
            f"pipeline_parallel_size ({pp}) is larger than the model's number of layers "
            f"({mc.num_layers})"
        )
    if not getattr(get_model_class(mc.architecture), "supports_pp", False):
        raise ValueError(
            f"{mc.architecture} does not support pipeline parallelism; use "
            f"pipeline_parallel_size=1 (tensor_parallel_size works)"
        )


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


def verify_parallel_config(config: EngineConfig) -> None:
    """Raise ValueError for a split that cannot work (in the driver, before spawning)."""
    verify_tensor_parallel(config)
    verify_pipeline_parallel(config)


class DistributedExecutorBase(Executor):
    """One worker per rank; subclasses supply the transport (processes or actors)."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        verify_parallel_config(config)
        self._verify_devices()
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

    def _num_devices_available(self) -> int | None:
        """GPUs this executor can place ranks on (None: not checked here)."""
        return None

    def _verify_devices(self) -> None:
        if self.config.device_config.device.type != "cuda":
            return
        world = self.config.parallel_config.world_size
        available = self._num_devices_available()
        if available is not None and world > available:
            raise ValueError(
                f"tensor_parallel_size x pipeline_parallel_size = {world} needs {world} GPUs "
                f"but only {available} are visible"
            )

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

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        output = self.collective_rpc("execute_model", scheduler_output)[self.output_rank]
        if not isinstance(output, ModelRunnerOutput):
            raise RuntimeError(
                f"output rank {self.output_rank} returned {type(output).__name__}, "
                "not a ModelRunnerOutput"
            )
        return output

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


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
