"""Engine arguments (vLLM's names and defaults) -> the validated engine config.

`EngineArgs` is what users pass (to `LLM(...)` as keyword arguments, or as
kebab-case CLI flags); `EngineArgs.create_engine_config()` validates it once and
returns an `EngineConfig` (engine_config.py, built by config_builder.py) that is
passed down to every layer. The imports flow one way:
config.py -> config_builder.py -> engine_config.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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
    SCHEDULING_POLICIES,
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
    "SCHEDULING_POLICIES",
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


T = TypeVar("T")


def engine_arg(
    default: T, help: str, choices: Sequence[object] = (), aliases: Sequence[str] = ()
) -> T:
    """An EngineArgs field with its CLI help, choices and short flags in the field's
    metadata (entrypoints/cli_args.py builds the argparse flags from them)."""
    meta = {"help": help, "choices": tuple(choices), "aliases": tuple(aliases)}
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class EngineArgs:
    """vLLM's engine arguments: same names, same meanings, same defaults."""

    model: str | None = engine_arg(
        None,
        "Model: a directory, a .gguf file or a known name (default: the embedded "
        "SmolLM2-135M-Instruct).",
    )
    tokenizer: str | None = engine_arg(None, "Tokenizer directory or name (default: the model's).")
    tokenizer_mode: str = engine_arg("auto", "auto: the fast tokenizer if there is one; slow.")
    skip_tokenizer_init: bool = engine_arg(
        False, "Load no tokenizer: prompts come as token ids and outputs are not detokenized."
    )
    trust_remote_code: bool = engine_arg(False, "Run the model folder's own Python code (HF's).")
    download_dir: str | None = engine_arg(None, "Where to look for downloaded models.")
    load_format: str = engine_arg(
        "auto", "Weight format; dummy: random weights of the real shapes.", LOAD_FORMATS
    )
    dtype: str = engine_arg(
        "auto", "Weight and activation dtype (auto: the checkpoint's).", ("auto", *DTYPE_ALIASES)
    )
    kv_cache_dtype: str = engine_arg("auto", "KV cache dtype (auto: the model's).", ("auto",))
    seed: int | None = engine_arg(0, "Random seed.")
    max_model_len: int | None = engine_arg(
        None, "Context length (prompt + output); accepts 2048, 2k (1000s) or 2K (1024s)."
    )
    distributed_executor_backend: str | None = engine_arg(
        None, "How workers run: uni (one process), mp (processes) or ray.", EXECUTOR_BACKENDS
    )
    pipeline_parallel_size: int = engine_arg(1, "Pipeline stages (GPUs in series).", (), ["-pp"])
    tensor_parallel_size: int = engine_arg(
        1, "GPUs each layer is split over (tensor parallelism).", (), ["-tp"]
    )
    block_size: int = engine_arg(16, "Tokens per KV cache block.")
    enable_prefix_caching: bool = engine_arg(True, "Reuse the KV cache of shared prompt prefixes.")
    swap_space: float = engine_arg(
        4,
        "CPU KV tier per GPU, in GiB: preempted requests and evicted prefix-cache blocks are "
        "kept there (GPU only).",
    )
    cpu_offload_gb: float = engine_arg(
        0,
        "GiB of weights kept in pinned CPU memory, streamed to the GPU layer by layer (GPU only).",
    )
    gpu_memory_utilization: float = engine_arg(
        0.9, "Fraction of GPU memory for weights, activations and KV cache."
    )
    num_gpu_blocks_override: int | None = engine_arg(
        None, "Number of KV cache blocks, instead of the number found by profiling."
    )
    max_num_batched_tokens: int | None = engine_arg(None, "Token budget per step.")
    max_num_seqs: int | None = engine_arg(
        None, "Maximum number of sequences per step (default 256)."
    )
    max_logprobs: int = engine_arg(20, "Most logprobs a request may ask for (-1: no limit).")
    disable_log_stats: bool = engine_arg(False, "Do not log the periodic throughput line.")
    revision: str | None = engine_arg(None, "Model revision (branch, tag or commit).")
    generation_config: str = engine_arg(
        "auto",
        "Sampling defaults: auto (the model's generation_config.json), vllm (none: "
        "SamplingParams' own), or a folder with a generation_config.json. Its "
        "max_new_tokens caps every request's max_tokens.",
    )
    override_generation_config: dict[str, Any] | None = engine_arg(
        None,
        "Sampling defaults set over --generation-config's, as JSON: '{\"temperature\": 0.5}'.",
    )
    quantization: str | None = engine_arg(
        None, "Quantization method (default: the checkpoint's).", (), ["-q"]
    )
    enforce_eager: bool = engine_arg(False, "Never capture CUDA graphs (always eager).")
    max_seq_len_to_capture: int = engine_arg(
        8192, "Longest context that decode CUDA graphs cover (longer ones run eagerly)."
    )
    disable_custom_all_reduce: bool = engine_arg(
        False, "Use NCCL's all-reduce instead of the custom one (tensor parallel)."
    )
    enable_chunked_prefill: bool = engine_arg(
        True, "Split long prompts over steps within the token budget."
    )
    served_model_name: str | None = engine_arg(
        None, "Model name(s) the API answers to; the first one is reported."
    )
    device: str = engine_arg("auto", "Device (auto: CUDA when there is one).", DEVICES)
    runner: str = engine_arg("auto", "generate or pooling (auto: from the model).", RUNNERS)
    task: str = engine_arg("auto", "vLLM's older name of the runner.", TASKS)
    pooling_type: str | None = engine_arg(
        None, "Pooling of embeddings: LAST, MEAN, CLS or ALL (default: the model's)."
    )
    pooling_normalize: bool | None = engine_arg(
        None, "L2-normalize embeddings (default: the model's)."
    )
    kv_cache_memory_bytes: int | None = engine_arg(
        None, "KV cache size in bytes (CPU budget); accepts 512M, 2G, ..."
    )
    async_scheduling: bool | None = engine_arg(
        None,
        "Schedule the next step while the GPU runs this one (default: on for CUDA; "
        "pipeline parallel: a batch per stage in flight).",
    )
    preemption_mode: str | None = engine_arg(
        None,
        "recompute | swap (default: swap requests with many computed tokens, recompute "
        "short ones).",
        PREEMPTION_MODES,
    )
    scheduling_policy: str = engine_arg(
        "fcfs",
        "fcfs: first come, first served; priority: requests with a lower `priority` "
        "value first (arrival time breaks ties), and when the KV cache is full the "
        "lowest-priority running request is preempted first.",
        SCHEDULING_POLICIES,
    )
    structured_outputs_config: StructuredOutputsConfig | None = engine_arg(
        None,
        'Grammar backend options: JSON (\'{"backend": "xgrammar"}\') or '
        "backend=auto|guidance|xgrammar,disable_any_whitespace=true (default: auto = guidance).",
    )
    model_impl: str = engine_arg(
        "auto",
        "auto: native implementation, else the HF transformers modeling code with paged "
        "attention; pagedllm (alias vllm): native only; transformers: always HF's code.",
        MODEL_IMPLS,
    )

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
        check_choice("scheduling_policy", self.scheduling_policy, SCHEDULING_POLICIES)
        override = self.override_generation_config
        if override is not None and not isinstance(override, dict):
            raise ValueError(
                f"override_generation_config must be a dict, got {type(override).__name__}"
            )
        if self.kv_cache_dtype != "auto":
            check_choice("kv_cache_dtype", self.kv_cache_dtype, ("auto",))

    def create_engine_config(self) -> EngineConfig:
        self.validate()
        return build_engine_config(self)
