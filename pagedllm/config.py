"""Engine arguments (vLLM's names and defaults) and the validated engine config.

`EngineArgs` is what users pass (to `LLM(...)` as keyword arguments, or as
kebab-case CLI flags); `EngineArgs.create_engine_config()` validates it once and
returns an `EngineConfig` that is passed down to every layer. Values found at run
time (the number of KV blocks) are set once on `CacheConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}
LOAD_FORMATS = ("auto", "safetensors", "pt", "gguf", "dummy")
DEVICES = ("auto", "cpu", "cuda")
EXECUTOR_BACKENDS = ("uni", "mp", "ray")
RUNNERS = ("auto", "generate", "pooling")
TASKS = ("auto", "generate", "embed", "embedding")
POOLING_TYPES = ("LAST", "MEAN", "CLS", "ALL")
PREEMPTION_MODES = ("recompute", "swap")
MODEL_IMPLS = ("auto", "pagedllm", "vllm", "transformers")  # "vllm": alias of "pagedllm"
STRUCTURED_OUTPUTS_BACKENDS = ("auto", "guidance", "xgrammar")


def _check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_positive(name: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


@dataclass
class ModelConfig:
    model: str  # the path actually loaded (a directory or a .gguf file)
    tokenizer: str
    hf_config: Any  # transformers.PretrainedConfig
    dtype: torch.dtype
    max_model_len: int
    seed: int
    trust_remote_code: bool
    load_format: str
    quantization: str | None
    served_model_name: str
    runner: str  # "generate" | "pooling"
    pooling_type: str | None = None
    pooling_normalize: bool | None = None
    revision: str | None = None
    max_logprobs: int = 20
    generation_config: dict[str, Any] = field(default_factory=dict)
    model_impl: str = "pagedllm"  # resolved: "pagedllm" (native) | "transformers" (fallback)

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None) or []
        return archs[0] if archs else ""

    @property
    def vocab_size(self) -> int:
        return int(self.hf_config.vocab_size)

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config.hidden_size)

    @property
    def num_layers(self) -> int:
        cfg = self.hf_config
        layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None)
        return int(layers or cfg.n_layer)  # num_layers: ChatGLM's own config

    @property
    def num_attention_heads(self) -> int:
        cfg = self.hf_config
        return int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)

    @property
    def num_kv_heads(self) -> int:
        cfg = self.hf_config
        kv = getattr(cfg, "num_key_value_heads", None)
        if not kv and getattr(cfg, "multi_query_attention", False):
            kv = cfg.multi_query_group_num  # ChatGLM's query groups
        return int(kv) if kv else self.num_attention_heads

    @property
    def head_dim(self) -> int:
        hd = getattr(self.hf_config, "head_dim", None) or getattr(
            self.hf_config, "kv_channels", None
        )
        return int(hd) if hd else self.hidden_size // self.num_attention_heads


@dataclass
class CacheConfig:
    block_size: int
    gpu_memory_utilization: float
    swap_space: float
    enable_prefix_caching: bool
    cpu_offload_gb: float
    kv_cache_dtype: str = "auto"
    num_gpu_blocks_override: int | None = None
    kv_cache_memory_bytes: int | None = None  # CPU: how much memory the KV cache may take
    num_gpu_blocks: int | None = None  # set once, after memory profiling


@dataclass
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True
    log_stats: bool = True
    # Schedule step N+1 while step N runs on the device (its tokens arrive later).
    async_scheduling: bool = False
    # "recompute" | "swap" | None: swap long requests, recompute short ones
    # (core/kv_swap.py, SWAP_MIN_TOKENS).
    preemption_mode: str | None = None


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "uni"
    disable_custom_all_reduce: bool = False

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass
class DeviceConfig:
    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class StructuredOutputsConfig:
    """vLLM's --structured-outputs-config: the grammar backend ("auto" is llguidance,
    vLLM's "guidance"; "xgrammar" needs `pip install xgrammar`) and whether JSON may
    hold whitespace between its tokens (vLLM's default: it may)."""

    backend: str = "auto"
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        _check_choice(
            "structured_outputs_config.backend", self.backend, STRUCTURED_OUTPUTS_BACKENDS
        )

    @classmethod
    def from_cli(cls, value: str) -> StructuredOutputsConfig:
        """JSON (`{"backend": "xgrammar"}`) or `backend=xgrammar,disable_any_whitespace=true`."""
        import json

        text = value.strip()
        if text.startswith("{"):
            return cls(**json.loads(text))
        items = dict(part.split("=", 1) for part in text.split(",") if part)
        kwargs: dict[str, Any] = dict(items)
        if "disable_any_whitespace" in kwargs:
            kwargs["disable_any_whitespace"] = items["disable_any_whitespace"].lower() == "true"
        return cls(**kwargs)


@dataclass
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    device_config: DeviceConfig
    enforce_eager: bool = False
    max_seq_len_to_capture: int = 8192
    structured_outputs_config: StructuredOutputsConfig = field(
        default_factory=StructuredOutputsConfig
    )


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
    async_scheduling: bool | None = None  # None: on for CUDA (pipeline_parallel_size 1)
    preemption_mode: str | None = None  # None: by length (swap long requests)
    structured_outputs_config: StructuredOutputsConfig | None = None  # None: the defaults
    model_impl: str = "auto"  # auto | pagedllm (alias vllm) | transformers (HF fallback)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self) -> None:
        _check_choice("load_format", self.load_format, LOAD_FORMATS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("runner", self.runner, RUNNERS)
        _check_choice("task", self.task, TASKS)
        _check_choice("model_impl", self.model_impl, MODEL_IMPLS)
        if self.dtype not in DTYPE_ALIASES and self.dtype != "auto":
            _check_choice("dtype", self.dtype, ("auto", *DTYPE_ALIASES))
        if self.distributed_executor_backend is not None:
            _check_choice(
                "distributed_executor_backend", self.distributed_executor_backend, EXECUTOR_BACKENDS
            )
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            _check_choice("block_size", self.block_size, (1, 2, 4, 8, 16, 32, 64, 128))
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        _check_positive("tensor_parallel_size", self.tensor_parallel_size)
        _check_positive("pipeline_parallel_size", self.pipeline_parallel_size)
        _check_positive("max_model_len", self.max_model_len)
        _check_positive("max_num_seqs", self.max_num_seqs)
        _check_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _check_positive("swap_space", self.swap_space, allow_zero=True)
        _check_positive("cpu_offload_gb", self.cpu_offload_gb, allow_zero=True)
        if self.max_logprobs != -1:  # vLLM: -1 lifts the cap (logprobs=-1 then allowed)
            _check_positive("max_logprobs", self.max_logprobs, allow_zero=True)
        _check_positive("num_gpu_blocks_override", self.num_gpu_blocks_override)
        if self.quantization is not None:
            from pagedllm.layers.quantization import QUANTIZATION_METHODS

            _check_choice("quantization", self.quantization, (None, "none", *QUANTIZATION_METHODS))
        if self.pooling_type is not None:
            _check_choice("pooling_type", self.pooling_type.upper(), POOLING_TYPES)
        if self.preemption_mode is not None:
            _check_choice("preemption_mode", self.preemption_mode, PREEMPTION_MODES)
        if self.kv_cache_dtype != "auto":
            _check_choice("kv_cache_dtype", self.kv_cache_dtype, ("auto",))

    def create_engine_config(self) -> EngineConfig:
        from pagedllm.config_builder import build_engine_config

        self.validate()
        return build_engine_config(self)
