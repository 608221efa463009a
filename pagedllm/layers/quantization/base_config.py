"""The quantization interface (vLLM's shape): a `QuantizationConfig` parsed from the
checkpoint's `quantization_config` hands each linear layer a `LinearMethodBase`, which
creates the layer's parameters, runs its matmul and post-processes the loaded weights.

Parameters that a method creates carry attributes that the linear layers' weight
loaders read to shard them for tensor parallelism:

    output_dim    the dim along the layer's output features (absent: not sharded by
                  column-parallel layers, e.g. a per-tensor scale)
    input_dim     the dim along the input features (absent: not sharded by
                  row-parallel layers)
    packed_dim    the dim whose entries pack `packed_factor` values (int4 in int32)
    shard_indexed a small per-shard tensor [num_shards] (fp8 per-tensor scales of a
                  fused qkv / gate_up layer): shard i writes entry i
    weight_loader set by the layer
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class LinearMethodBase(ABC):
    """How one linear layer stores and multiplies its weight."""

    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
    ) -> None:
        """Register this rank's parameters on `layer` (output_partition_sizes: the
        per-rank sizes of the fused parts, e.g. [q, k, v])."""

    @abstractmethod
    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y = x W^T + bias for x [..., in_per_rank] in the activation dtype."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:  # noqa: B027
        """Repack/convert the loaded parameters once (default: nothing to do)."""


class QuantizationConfig(ABC):
    """A quantization method's settings, parsed from an HF `quantization_config`."""

    @classmethod
    @abstractmethod
    def get_name(cls) -> str:
        """vLLM's name of the method (the `quantization=` argument)."""

    @classmethod
    @abstractmethod
    def from_config(cls, hf_quant_config: dict[str, Any]) -> QuantizationConfig:
        """Parse the checkpoint's `quantization_config` ({} when quantizing online)."""

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        """Activation dtypes the method runs with (every float dtype unless overridden)."""
        return [torch.float16, torch.bfloat16, torch.float32]

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str) -> LinearMethodBase | None:
        """The method for the layer named `prefix` (None: leave it unquantized)."""

    @staticmethod
    def get_from_keys(config: dict[str, Any], keys: list[str], default: Any = None) -> Any:
        for key in keys:
            if key in config:
                return config[key]
        return default


def set_weight_attrs(param: torch.Tensor, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        if hasattr(param, key):
            raise AttributeError(f"overwriting existing tensor attribute {key}")
        setattr(param, key, value)


def is_layer_skipped(prefix: str, skipped: list[str]) -> bool:
    """`prefix` names a module listed in `skipped` (a full name or a name's component
    sequence, e.g. "lm_head", "model.layers.0.mlp.down_proj", "down_proj")."""
    if not prefix:
        return False
    for name in skipped:
        if prefix == name or prefix.endswith("." + name) or f".{name}." in f".{prefix}.":
            return True
    return False
