"""The executor interface: how the engine reaches its workers (one in process, or
one per rank in other processes / Ray actors)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from pagedllm.config import EngineConfig
from pagedllm.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput


class Executor(ABC):
    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    @abstractmethod
    def determine_num_blocks(self) -> int:
        """KV blocks every rank can hold (the minimum over ranks)."""

    @abstractmethod
    def initialize_kv_cache(self, num_blocks: int) -> None: ...

    @abstractmethod
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput: ...

    def check_health(self) -> None:
        """Raise if a worker is gone."""

    def shutdown(self) -> None:
        """Release workers and their processes."""


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
