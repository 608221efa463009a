"""The executor interface: how the engine reaches its workers (one in process, or
one per rank in other processes / Ray actors)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pagedllm.config import EngineConfig
from pagedllm.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.worker.async_output import AsyncModelRunnerOutput


class ExecutorDeadError(RuntimeError):
    """A worker died or failed mid-step: the ranks' collectives are out of step, so
    the executor (and its engine) cannot run another step. Not recoverable.
    `remote_error` is the exception the worker raised, when it raised one."""

    def __init__(self, message: str, remote_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.remote_error = remote_error


class Executor(ABC):
    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    @abstractmethod
    def determine_num_blocks(self) -> int:
        """KV blocks every rank can hold (the minimum over ranks)."""

    @abstractmethod
    def initialize_kv_cache(self, num_blocks: int) -> None: ...

    @abstractmethod
    def execute_model(
        self, scheduler_output: SchedulerOutput
    ) -> ModelRunnerOutput | AsyncModelRunnerOutput:
        """Launch the step; `.get()` on the result gives its ModelRunnerOutput (waiting
        for the device when the tokens are still on their way to the host)."""

    # Whether the step can stop at its logits (launch_forward) and sample later
    # (sample_tokens): the engine then fills the grammar bitmask while the device
    # runs the forward pass. Only the in-process executor does so far.
    supports_deferred_sampling: bool = False

    def launch_forward(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        """The step up to its logits; None when sample_tokens must finish it, else
        the step's output. Only where supports_deferred_sampling."""
        raise NotImplementedError

    def sample_tokens(
        self, grammar_bitmask: np.ndarray | None, structured_output_request_ids: list[str]
    ) -> ModelRunnerOutput | AsyncModelRunnerOutput:
        """Finish the step launch_forward left: sample under the grammar bitmask."""
        raise NotImplementedError

    @property
    def max_concurrent_batches(self) -> int:
        """How many launched steps may be unfinished at once: the pipeline stages, where
        the executor's steps are futures (the engine core keeps a batch queue), else 1."""
        return 1

    def check_health(self) -> None:
        """Raise ExecutorDeadError if a worker is gone."""
        return None

    def shutdown(self) -> None:
        """Release workers and their processes."""
        return None


def get_executor_class(config: EngineConfig) -> type[Executor]:
    backend = config.parallel_config.distributed_executor_backend
    if backend == "uni":
        from pagedllm.executor.uniproc import UniProcExecutor

        return UniProcExecutor
    if backend == "mp":
        from pagedllm.executor.multiproc import MultiprocExecutor

        return MultiprocExecutor
    from pagedllm.executor.ray_executor import RayExecutor

    return RayExecutor
