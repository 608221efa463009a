"""EngineArgs -> EngineConfig: resolve the model, then derive every setting once
(device, dtype, context length, runner, cache, scheduler and parallel configs) and
check the parallel split (`config_parallel.py`)."""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from pagedllm.config_parallel import verify_parallel_config
from pagedllm.engine_config import (
    DTYPE_ALIASES,
    CacheConfig,
    DeviceConfig,
    EngineConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    StructuredOutputsConfig,
)

if TYPE_CHECKING:
    from pagedllm.config import EngineArgs

logger = logging.getLogger(__name__)


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was asked for but no CUDA GPU is available; use device='cpu'"
        )
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bfloat16() -> bool:
    """AVX-512 BF16 or AMX: bfloat16 matrix products at twice the float32 rate."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _pick_dtype(
    name: str, checkpoint_dtype: torch.dtype | None, device: torch.device
) -> torch.dtype:
    if name != "auto":
        return DTYPE_ALIASES[name]
    if device.type == "cpu":
        # A bfloat16 checkpoint stays bfloat16 where the CPU multiplies it natively;
        # everything else runs in float32 (half precision is slow on most CPUs, and
        # quantized GGUF weights are dequantized to float32).
        if checkpoint_dtype == torch.bfloat16 and cpu_has_fast_bfloat16():
            return torch.bfloat16
        return torch.float32
    if checkpoint_dtype in (torch.float16, torch.bfloat16):
        return checkpoint_dtype
    return torch.bfloat16


def _checkpoint_quantization(hf_config: Any) -> str | None:
    raw = getattr(hf_config, "quantization_config", None)
    if raw is None:
        return None
    raw = raw if isinstance(raw, dict) else raw.to_dict()
    method = raw.get("quant_method")
    return str(method).lower() if method else None


def _pick_quantization(
    requested: str | None, hf_config: Any, load_format: str, device: torch.device
) -> str | None:
    """The checkpoint's method (its config's quantization_config) unless the argument
    names one; `fp8` on a float checkpoint quantizes it online, and dummy weights take
    any method's default layout. A GGUF file stays packed on the CPU (its packed kernel
    is ahead of float32 at 1 and 32 chats: docs/benchmarks.md, C1) and is dequantized
    to `dtype` at load on a GPU (no packed GGUF kernel there) or with
    `quantization="none"` (float32 weights on the CPU)."""
    from pagedllm.layers.quantization import QUANTIZATION_METHODS

    found = "gguf" if load_format == "gguf" else _checkpoint_quantization(hf_config)
    if found is not None and found not in QUANTIZATION_METHODS:
        raise ValueError(
            f"the checkpoint is quantized with {found!r}, which is not supported "
            f"(supported: {QUANTIZATION_METHODS})"
        )
    if requested == "none":  # float weights: a GGUF file is dequantized at load
        if found not in (None, "gguf"):
            raise ValueError(
                f"quantization='none' needs float or GGUF weights; the checkpoint is "
                f"quantized with {found!r}"
            )
        return None
    if requested is None and found == "gguf":
        return "gguf" if device.type == "cpu" else None
    if requested is None or requested == found:
        return found
    if found is not None:
        raise ValueError(
            f"quantization={requested!r} does not match the checkpoint, which is "
            f"quantized with {found!r}; leave quantization unset or pass {found!r}"
        )
    if requested != "fp8" and load_format != "dummy":  # fp8 quantizes float weights online
        raise ValueError(
            f"quantization={requested!r} needs a checkpoint quantized with {requested!r} "
            "(its config.json has no quantization_config); only 'fp8' quantizes a float "
            "checkpoint online"
        )
    return requested


def _pick_runner(args: EngineArgs, hf_config: Any) -> str:
    if args.runner != "auto":
        return args.runner
    if args.task in ("embed", "embedding"):
        return "pooling"
    if args.task == "generate":
        return "generate"
    from pagedllm.model_loader.registry import is_pooling_architecture

    archs = getattr(hf_config, "architectures", None) or []
    return "pooling" if archs and is_pooling_architecture(archs[0]) else "generate"


def _pick_model_impl(args: EngineArgs, hf_config: Any, quantization: str | None) -> str:
    """The implementation: "pagedllm" (native) or "transformers" (models/transformers.py),
    which runs on one device, unquantized, eagerly (CUDA graphs are not verified for
    HF's modeling code)."""
    from pagedllm.model_loader.registry import resolve_model_impl

    archs = getattr(hf_config, "architectures", None) or []
    arch = archs[0] if archs else ""
    impl = resolve_model_impl(arch, args.model_impl, hf_config)
    if impl != "transformers":
        logger.info("Using the native pagedllm implementation of %s", arch)
        return impl
    if args.tensor_parallel_size > 1 or args.pipeline_parallel_size > 1:
        raise ValueError(
            f"{arch} runs through the Transformers fallback, which supports neither tensor "
            f"nor pipeline parallelism; use tensor_parallel_size=1 and pipeline_parallel_size=1"
        )
    if quantization is not None:
        raise ValueError(
            f"{arch} runs through the Transformers fallback, which does not support "
            f"quantization={quantization!r}"
        )
    logger.info(
        "Using the Transformers fallback for %s (HF modeling code, paged attention)%s",
        arch,
        "" if args.enforce_eager else "; enforce_eager=True (no CUDA graphs for it)",
    )
    return impl


def build_engine_config(args: EngineArgs) -> EngineConfig:
    from pagedllm.model_loader.resolve import resolve_model

    resolved = resolve_model(
        args.model, args.download_dir, args.load_format, args.revision, args.trust_remote_code
    )
    hf_config = resolved.hf_config
    device = _pick_device(args.device)
    dtype = _pick_dtype(args.dtype, resolved.checkpoint_dtype, device)
    max_model_len = _pick_max_model_len(args.max_model_len, hf_config, resolved.path)
    runner = _pick_runner(args, hf_config)
    quantization = _pick_quantization(args.quantization, hf_config, resolved.load_format, device)
    model_impl = _pick_model_impl(args, hf_config, quantization)
    generation_config, default_sampling = _generation_defaults(args, resolved.generation_config)
    model_config = ModelConfig(
        model=resolved.path,
        tokenizer=args.tokenizer or resolved.tokenizer_path,
        hf_config=hf_config,
        dtype=dtype,
        max_model_len=max_model_len,
        seed=args.seed if args.seed is not None else 0,
        trust_remote_code=args.trust_remote_code,
        load_format=resolved.load_format,
        quantization=quantization,
        served_model_name=args.served_model_name or resolved.name,
        runner=runner,
        pooling_type=args.pooling_type.upper() if args.pooling_type else None,
        pooling_normalize=args.pooling_normalize,
        revision=args.revision,
        max_logprobs=args.max_logprobs,
        generation_config=generation_config,
        default_sampling=default_sampling,
        model_impl=model_impl,
    )
    parallel_config = _parallel_config(args)
    verify_parallel_config(model_config, parallel_config, device)  # once, before any worker
    return EngineConfig(
        model_config=model_config,
        cache_config=_cache_config(args),
        scheduler_config=_scheduler_config(args, max_model_len, device),
        parallel_config=parallel_config,
        device_config=DeviceConfig(device=device),
        enforce_eager=args.enforce_eager or model_impl == "transformers",
        max_seq_len_to_capture=args.max_seq_len_to_capture,
        structured_outputs_config=_structured_outputs_config(args.structured_outputs_config),
    )


def _structured_outputs_config(value: Any) -> StructuredOutputsConfig:
    """LLM(structured_outputs_config={"backend": ...}) takes a dict as vLLM does."""
    if value is None:
        return StructuredOutputsConfig()
    if isinstance(value, dict):
        return StructuredOutputsConfig(**value)
    return value


def _pick_max_model_len(requested: int | None, hf_config: Any, path: str) -> int:
    derived = None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(hf_config, key, None)
        if value:
            derived = int(value)
            break
    if derived is None:
        derived = 2048
    from pagedllm.model_loader.sentence_transformers import st_max_seq_length

    st_len = st_max_seq_length(path)
    if st_len is not None:
        derived = min(derived, st_len)
    if requested is None:
        return derived
    if requested > derived:
        raise ValueError(
            f"max_model_len={requested} is larger than the model's maximum context "
            f"length ({derived}, from its config)"
        )
    return requested


def _cache_config(args: EngineArgs) -> CacheConfig:
    return CacheConfig(
        block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        swap_space=args.swap_space,
        enable_prefix_caching=args.enable_prefix_caching,
        cpu_offload_gb=args.cpu_offload_gb,
        kv_cache_dtype=args.kv_cache_dtype,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
    )


def _scheduler_config(
    args: EngineArgs, max_model_len: int, device: torch.device
) -> SchedulerConfig:
    max_tokens = args.max_num_batched_tokens or max(8192, args.max_num_seqs or 0)
    max_num_seqs = args.max_num_seqs or min(256, max_tokens)
    if not args.enable_chunked_prefill:
        max_tokens = max(max_tokens, max_model_len)
    if max_tokens < max_num_seqs:
        raise ValueError(
            f"max_num_batched_tokens ({max_tokens}) must be >= max_num_seqs ({max_num_seqs})"
        )
    return SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=args.enable_chunked_prefill,
        log_stats=not args.disable_log_stats,
        async_scheduling=_pick_async_scheduling(args, device),
        preemption_mode=args.preemption_mode,
        policy=args.scheduling_policy,
    )


# The generation-config values that are sampling defaults (vLLM's list).
SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
GENERATION_DEFAULT_KEYS = (*SAMPLING_DEFAULT_KEYS, "max_new_tokens")


def _generation_defaults(
    args: EngineArgs, model_generation_config: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the generation config whose EOS ids stop requests, the sampling defaults), as
    vLLM's --generation-config auto|vllm|FOLDER and --override-generation-config."""
    from pagedllm.model_loader.resolve import read_generation_config

    mode = args.generation_config
    generation_config = model_generation_config
    if mode not in ("auto", "vllm"):
        if not os.path.isfile(os.path.join(mode, "generation_config.json")):
            raise ValueError(
                f"generation_config must be 'auto', 'vllm' or a folder with a "
                f"generation_config.json, got {mode!r}"
            )
        generation_config = read_generation_config(mode)
    override = args.override_generation_config or {}
    unknown = sorted(set(override) - set(GENERATION_DEFAULT_KEYS))
    if unknown:
        raise ValueError(
            f"override_generation_config may set {', '.join(GENERATION_DEFAULT_KEYS)}; "
            f"got {', '.join(map(repr, unknown))}"
        )
    source = {} if mode == "vllm" else generation_config
    defaults = {k: source[k] for k in GENERATION_DEFAULT_KEYS if k in source}
    defaults.update(override)
    return generation_config, {k: v for k, v in defaults.items() if v is not None}


def _pick_async_scheduling(args: EngineArgs, device: torch.device) -> bool:
    """On by default on CUDA with one worker or the mp executor; accepted with Ray too
    (its steps are futures, sent to every rank in order) but opt-in there until Ray has
    run on a GPU here. With pipeline stages the engine keeps a batch per stage in flight
    instead (the first stage cannot use the last one's tokens before they reach it)."""
    if args.async_scheduling is None:
        return device.type == "cuda" and args.distributed_executor_backend != "ray"
    return args.async_scheduling


def _parallel_config(args: EngineArgs) -> ParallelConfig:
    world = args.tensor_parallel_size * args.pipeline_parallel_size
    backend = args.distributed_executor_backend or ("uni" if world == 1 else "mp")
    return ParallelConfig(
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        distributed_executor_backend=backend,
        disable_custom_all_reduce=args.disable_custom_all_reduce,
    )
