"""A worker: one process's share of the model (one tensor/pipeline-parallel rank)
wrapped around its ModelRunner. Executors call these methods, in process or over
an RPC channel."""

from __future__ import annotations

import torch

from pagedllm.config import EngineConfig
from pagedllm.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.worker.model_runner import ModelRunner


class Worker:
    def __init__(self, config: EngineConfig, rank: int = 0, device: torch.device | None = None) -> None:
        self.config = config
        self.rank = rank
        self.device = device or config.device_config.device
        self.model_runner = ModelRunner(config, self.device)

    @property
    def tp_size(self) -> int:
        return self.config.parallel_config.tensor_parallel_size

    def load_model(self) -> None:
        self.model_runner.load_model()

    def determine_num_blocks(self) -> int:
        return self.model_runner.determine_num_blocks(self.tp_size)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.model_runner.initialize_kv_cache(num_blocks, self.tp_size)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)
