"""The checks of a tensor/pipeline-parallel split, run once by the config builder
(`build_engine_config`) when the EngineConfig is made, so that an impossible split
is a ValueError before any worker starts."""

from __future__ import annotations

import torch

from pagedllm.engine_config import ModelConfig, ParallelConfig


def verify_parallel_config(
    model_config: ModelConfig, parallel_config: ParallelConfig, device: torch.device
) -> None:
    verify_tensor_parallel(model_config, parallel_config.tensor_parallel_size)
    verify_pipeline_parallel(model_config, parallel_config.pipeline_parallel_size)
    verify_visible_devices(parallel_config, device)


def verify_tensor_parallel(mc: ModelConfig, tp: int) -> None:
    """What the tensor-parallel layers would fail on: heads, kv heads and the MLP's
    intermediate size split evenly across the ranks."""
    _check_divisible("num_attention_heads", mc.num_attention_heads, tp)
    kv = mc.num_kv_heads
    # tp > kv heads: each kv head is replicated on tp / kv ranks (needs kv | tp).
    if tp >= kv and tp % kv != 0:
        raise ValueError(
            f"tensor_parallel_size ({tp}) must be a multiple of num_key_value_heads ({kv}) "
            f"when it is larger"
        )
    if tp < kv:
        _check_divisible("num_key_value_heads", kv, tp)
    if mc.intermediate_size is not None:
        _check_divisible("intermediate_size", mc.intermediate_size, tp)


def verify_pipeline_parallel(mc: ModelConfig, pp: int) -> None:
    if pp == 1:
        return
    if pp > mc.num_layers:
        raise ValueError(
            f"pipeline_parallel_size ({pp}) is larger than the model's number of layers "
            f"({mc.num_layers})"
        )
    from pagedllm.model_loader.registry import get_model_class

    if not getattr(get_model_class(mc.architecture), "supports_pp", False):
        raise ValueError(
            f"{mc.architecture} does not support pipeline parallelism; use "
            f"pipeline_parallel_size=1 (tensor_parallel_size works)"
        )


def verify_visible_devices(pc: ParallelConfig, device: torch.device) -> None:
    """The mp executor places its ranks on this host's GPUs (Ray's may be elsewhere)."""
    if device.type != "cuda" or pc.distributed_executor_backend != "mp":
        return
    available = torch.cuda.device_count()
    if pc.world_size > available:
        raise ValueError(
            f"tensor_parallel_size x pipeline_parallel_size = {pc.world_size} needs "
            f"{pc.world_size} GPUs but only {available} are visible"
        )


def _check_divisible(name: str, value: int, tp: int) -> None:
    if value % tp != 0:
        raise ValueError(
            f"{name} ({value}) must be divisible by tensor_parallel_size ({tp}); "
            f"choose a tensor_parallel_size that divides it"
        )
