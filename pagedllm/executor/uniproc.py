"""The in-process executor: one worker, no RPC."""

from __future__ import annotations

import numpy as np

from pagedllm.config import EngineConfig
from pagedllm.executor.base import Executor
from pagedllm.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.worker.async_output import AsyncModelRunnerOutput
from pagedllm.worker.worker import Worker


class UniProcExecutor(Executor):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        if config.parallel_config.world_size != 1:
            raise ValueError(
                "distributed_executor_backend='uni' runs one worker; "
                f"tensor_parallel_size x pipeline_parallel_size is {config.parallel_config.world_size}"
            )
        self.worker = Worker(config)
        self.worker.load_model()

    def determine_num_blocks(self) -> int:
        return self.worker.determine_num_blocks()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.worker.initialize_kv_cache(num_blocks)

    def execute_model(
        self, scheduler_output: SchedulerOutput
    ) -> ModelRunnerOutput | AsyncModelRunnerOutput:
        # One rank: it is the output rank, so its runner's output is the step's.
        return self.worker.model_runner.execute_model(scheduler_output)

    supports_deferred_sampling = True

    def launch_forward(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        return self.worker.model_runner.launch_forward(scheduler_output)

    def sample_tokens(
        self, grammar_bitmask: np.ndarray | None, structured_output_request_ids: list[str]
    ) -> AsyncModelRunnerOutput:
        return self.worker.model_runner.sample_tokens(
            grammar_bitmask, structured_output_request_ids
        )

    def shutdown(self) -> None:
        # Drop the model, KV cache and CUDA graphs; device memory goes with them.
        self.worker.model_runner.cuda_graphs = None
        self.worker.model_runner.piecewise_graphs = None  # it holds the KV caches too
        self.worker.model_runner.kv_caches = []
        self.worker.model_runner.model = None
