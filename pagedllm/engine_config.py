"""The validated engine config, built once from `EngineArgs` (config.py) by
config_builder.py and passed down to every layer: `EngineConfig` and its parts (model,
cache, scheduler, parallel, device, structured outputs), the allowed values of the
arguments, and the checks both modules use. Values found at run time (the number of KV
blocks) are set once on `CacheConfig`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

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
SCHEDULING_POLICIES = ("fcfs", "priority")
MODEL_IMPLS = ("auto", "pagedllm", "vllm", "transformers")  # "vllm": alias of "pagedllm"
STRUCTURED_OUTPUTS_BACKENDS = ("auto", "guidance", "xgrammar")


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_positive(name: str, value: int | float | None, allow_zero: bool = False) -> None:
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
    generation_config: dict[str, Any] = field(default_factory=dict)  # its EOS ids count
    # The sampling defaults (--generation-config, --override-generation-config):
    # temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens.
    default_sampling: dict[str, Any] = field(default_factory=dict)
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
    def intermediate_size(self) -> int | None:
        """The MLP's hidden width (None: the config does not say)."""
        for key in ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"):
            value = getattr(self.hf_config, key, None)  # OPT: ffn_dim, GPT-2: n_inner,
            if value:  # ChatGLM: ffn_hidden_size
                return int(value)
        return None

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
    # "fcfs": arrival order; "priority": lower Request.priority first, then arrival
    # (core/request_queue.py), and the KV cache preempts the lowest priority first.
    policy: str = "fcfs"


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
        check_choice("structured_outputs_config.backend", self.backend, STRUCTURED_OUTPUTS_BACKENDS)

    @classmethod
    def from_cli(cls, value: str) -> StructuredOutputsConfig:
        """JSON (`{"backend": "xgrammar"}`) or `backend=xgrammar,disable_any_whitespace=true`."""
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
