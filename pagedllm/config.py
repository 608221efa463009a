"""Engine arguments (vLLM's names and defaults) -> the validated engine config.

`EngineArgs` is what users pass (to `LLM(...)` as keyword arguments, or as
kebab-case CLI flags); `EngineArgs.create_engine_config()` validates it once and
returns an `EngineConfig` (engine_config.py, built by config_builder.py) that is
passed down to every layer. The imports flow one way:
config.py -> config_builder.py -> engine_config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pagedllm.config_builder import build_engine_config
from pagedllm.engine_config import (
    DEVICES,
    DTYPE_ALIASES,
    EXECUTOR_BACKENDS,
    LOAD_FORMATS,
    MODEL_IMPLS,
    POOLING_TYPES,
    PREEMPTION_MODES,
    RUNNERS,
    STRUCTURED_OUTPUTS_BACKENDS,
    TASKS,
    CacheConfig,
    DeviceConfig,
    EngineConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    StructuredOutputsConfig,
    check_choice,
    check_positive,
)

# EngineConfig, its parts and the allowed values are also imported from here.
__all__ = [
    "EngineArgs",
    "DEVICES",
    "DTYPE_ALIASES",
    "EXECUTOR_BACKENDS",
    "LOAD_FORMATS",
    "MODEL_IMPLS",
    "POOLING_TYPES",
    "PREEMPTION_MODES",
    "RUNNERS",
    "STRUCTURED_OUTPUTS_BACKENDS",
    "TASKS",
    "CacheConfig",
    "DeviceConfig",
    "EngineConfig",
    "ModelConfig",
    "ParallelConfig",
    "SchedulerConfig",
    "StructuredOutputsConfig",
]


@dataclass
class EngineArgs:
    """vLLM's engine arguments: same names, same meanings, same defaults."""

    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    download_dir: str | None = None
    load_format: str = "auto"
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    seed: int | None = 0
    max_model_len: int | None = None
    distributed_executor_backend: str | None = None
    pipeline_parallel_size: int = 1
    tensor_parallel_size: int = 1
    block_size: int = 16
    enable_prefix_caching: bool = True
    swap_space: float = 4
    cpu_offload_gb: float = 0
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks_override: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_logprobs: int = 20
    disable_log_stats: bool = False
    revision: str | None = None
    quantization: str | None = None
    enforce_eager: bool = False
    max_seq_len_to_capture: int = 8192
    disable_custom_all_reduce: bool = False
    enable_chunked_prefill: bool = True
    served_model_name: str | None = None
    device: str = "auto"
    runner: str = "auto"
    task: str = "auto"
    pooling_type: str | None = None
    pooling_normalize: bool | None = None
    kv_cache_memory_bytes: int | None = None
    async_scheduling: bool | None = None  # None: on for CUDA (pp > 1: a batch per stage in flight)
    preemption_mode: str | None = None  # None: by length (swap long requests)
    structured_outputs_config: StructuredOutputsConfig | None = None  # None: the defaults
    model_impl: str = "auto"  # auto | pagedllm (alias vllm) | transformers (HF fallback)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self) -> None:
        check_choice("load_format", self.load_format, LOAD_FORMATS)
        check_choice("device", self.device, DEVICES)
        check_choice("runner", self.runner, RUNNERS)
        check_choice("task", self.task, TASKS)
        check_choice("model_impl", self.model_impl, MODEL_IMPLS)
        if self.dtype not in DTYPE_ALIASES and self.dtype != "auto":
            check_choice("dtype", self.dtype, ("auto", *DTYPE_ALIASES))
        if self.distributed_executor_backend is not None:
            check_choice(
                "distributed_executor_backend", self.distributed_executor_backend, EXECUTOR_BACKENDS
            )
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            check_choice("block_size", self.block_size, (1, 2, 4, 8, 16, 32, 64, 128))
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        check_positive("tensor_parallel_size", self.tensor_parallel_size)
        check_positive("pipeline_parallel_size", self.pipeline_parallel_size)
        check_positive("max_model_len", self.max_model_len)
        check_positive("max_num_seqs", self.max_num_seqs)
        check_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        check_positive("swap_space", self.swap_space, allow_zero=True)
        check_positive("cpu_offload_gb", self.cpu_offload_gb, allow_zero=True)
        if self.max_logprobs != -1:  # vLLM: -1 lifts the cap (logprobs=-1 then allowed)
            check_positive("max_logprobs", self.max_logprobs, allow_zero=True)
        check_positive("num_gpu_blocks_override", self.num_gpu_blocks_override)
        if self.quantization is not None:
            from pagedllm.layers.quantization import QUANTIZATION_METHODS

            check_choice("quantization", self.quantization, (None, "none", *QUANTIZATION_METHODS))
        if self.pooling_type is not None:
            check_choice("pooling_type", self.pooling_type.upper(), POOLING_TYPES)
        if self.preemption_mode is not None:
            check_choice("preemption_mode", self.preemption_mode, PREEMPTION_MODES)
        if self.kv_cache_dtype != "auto":
            check_choice("kv_cache_dtype", self.kv_cache_dtype, ("auto",))

    def create_engine_config(self) -> EngineConfig:
        self.validate()
        return build_engine_config(self)
