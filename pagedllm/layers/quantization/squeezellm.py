"""SqueezeLLM (vLLM's `squeezellm`): dense non-uniform 4-bit weights. Codes are packed
along the input features as in GPTQ 4-bit (qweight [K/8, N] int32); each output
feature has its own 16-entry table: W[n, k] = lookup_table[n, q[k, n]]."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.layers.quantization.base_config import LinearMethodBase, QuantizationConfig
from pagedllm.layers.quantization.packed_linear import (
    PackedLinearMethod,
    PackedWeights,
    check_divisible,
    new_param,
)


class SqueezeLLMConfig(QuantizationConfig):
    def __init__(self, weight_bits: int) -> None:
        if weight_bits != 4:
            raise ValueError(f"SqueezeLLM supports 4-bit weights only, got {weight_bits} bits")
        self.weight_bits = weight_bits

    @classmethod
    def get_name(cls) -> str:
        return "squeezellm"

    @classmethod
    def from_config(cls, hf_quant_config: dict[str, Any]) -> SqueezeLLMConfig:
        return cls(int(cls.get_from_keys(hf_quant_config, ["wbits", "bits"], 4)))

    def get_quant_method(self, layer: nn.Module, prefix: str) -> LinearMethodBase | None:
        return SqueezeLLMLinearMethod()


class SqueezeLLMLinearMethod(PackedLinearMethod):
    bits = 4

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
    ) -> None:
        k, n = input_size_per_partition, sum(output_partition_sizes)
        check_divisible(k, 8, "input size per partition (SqueezeLLM packs 8 rows)")
        new_param(
            layer,
            "qweight",
            (k // 8, n),
            torch.int32,
            input_dim=0,
            output_dim=1,
            packed_dim=0,
            packed_factor=8,
        )
        new_param(layer, "lookup_table", (n, 16), params_dtype, output_dim=0)

    def to_common(self, layer: Any) -> PackedWeights:
        return PackedWeights(layer.qweight.data, lookup_table=layer.lookup_table.data)
