"""A worker: one process's share of the model (one tensor/pipeline-parallel rank)
wrapped around its ModelRunner. Executors call these methods, in process or over
an RPC channel.

With world_size > 1 the worker joins the process group and builds its tensor and
pipeline groups *before* the ModelRunner exists, because layers read their rank
from parallel_state when they are built."""

from __future__ import annotations

import logging
import os

import torch

from pagedllm.config import EngineConfig
from pagedllm.distributed import parallel_state as ps
from pagedllm.scheduler_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.worker.async_output import AsyncModelRunnerOutput
from pagedllm.worker.kv_cache import KVCacheSpec
from pagedllm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def worker_device(config: EngineConfig, local_rank: int) -> torch.device:
    """cuda:local_rank on GPUs (one GPU per rank), the CPU otherwise."""
    device = config.device_config.device
    if device.type != "cuda":
        return device
    if config.parallel_config.world_size == 1 and device.index is not None:
        return device
    return torch.device("cuda", local_rank)


def _limit_cpu_threads(num_local_ranks: int) -> None:
    """Ranks on one host share its cores: split them, unless OMP_NUM_THREADS says otherwise."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_local_ranks))


class Worker:
    def __init__(
        self,
        config: EngineConfig,
        rank: int = 0,
        local_rank: int = 0,
        distributed_init_method: str | None = None,
    ) -> None:
        self.config = config
        self.rank = rank
        self.local_rank = local_rank
        self.device = worker_device(config, local_rank)
        pc = config.parallel_config
        if pc.world_size > 1:
            if distributed_init_method is None:
                raise ValueError(
                    "a worker of a world of several ranks needs distributed_init_method"
                )
            self._init_distributed(distributed_init_method)
        self.model_runner = ModelRunner(config, self.device)

    def _init_distributed(self, init_method: str) -> None:
        pc = self.config.parallel_config
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:
            _limit_cpu_threads(pc.world_size)
        backend = ps.default_backend(self.device)
        ps.init_distributed_environment(pc.world_size, self.rank, init_method, backend)
        ps.initialize_model_parallel(
            pc.tensor_parallel_size,
            pc.pipeline_parallel_size,
            backend,
            custom_all_reduce=not pc.disable_custom_all_reduce,
        )
        logger.info(
            "rank %d: tp rank %d/%d, pp stage %d/%d on %s (%s)",
            self.rank,
            ps.get_tensor_model_parallel_rank(),
            pc.tensor_parallel_size,
            ps.get_pipeline_model_parallel_rank(),
            pc.pipeline_parallel_size,
            self.device,
            backend,
        )

    @property
    def tp_size(self) -> int:
        return self.config.parallel_config.tensor_parallel_size

    @property
    def is_output_rank(self) -> bool:
        """Whether the engine takes this rank's sampled tokens."""
        pc = self.config.parallel_config
        return self.rank == ps.output_rank(pc.tensor_parallel_size, pc.pipeline_parallel_size)

    def get_pid(self) -> int:
        return os.getpid()

    def load_model(self) -> None:
        self.model_runner.load_model()

    def get_kv_cache_spec(self) -> KVCacheSpec:
        """This rank's cache layout: its own layers, its share of the kv heads."""
        return self.model_runner.kv_cache_spec(self.tp_size)

    def determine_num_blocks(self) -> int:
        return self.model_runner.determine_num_blocks(self.tp_size)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.model_runner.initialize_kv_cache(num_blocks, self.tp_size)
        if self.config.parallel_config.world_size > 1:
            # Every rank of the last stage samples; with async scheduling each fills
            # its next inputs from its own samples, so unseeded random rows must draw
            # the same numbers on every rank (loading may have used the RNG unevenly).
            torch.manual_seed(self.config.model_config.seed)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        """Every rank runs the step (collectives need all of them); only the output
        rank returns its result, the others None (nothing to ship back)."""
        output = self.model_runner.execute_model(scheduler_output)
        # .get(): the tokens on the host (the reply is pickled; device tensors are not sent).
        return output.get() if self.is_output_rank else None

    def execute_model_async(
        self, scheduler_output: SchedulerOutput
    ) -> ModelRunnerOutput | AsyncModelRunnerOutput | None:
        """Launch the step; the output rank gets its result (`.get()` waits for the
        tokens), the others None."""
        output = self.model_runner.execute_model(scheduler_output)
        return output if self.is_output_rank else None

    def shutdown(self) -> None:
        ps.destroy_distributed_environment()
