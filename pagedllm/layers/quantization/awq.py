"""AWQ (vLLM's `awq`): 4-bit weights with group-wise scales and zero points, packed
along the output features in AWQ's interleaved nibble order (int_packing.py)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.layers.quantization.base_config import (
    LinearMethodBase,
    QuantizationConfig,
    is_layer_skipped,
)
from pagedllm.layers.quantization.int_packing import AWQ_ORDER, pack_rows, unpack_cols
from pagedllm.layers.quantization.packed_linear import (
    SCALE_DUMMY_RANGE,
    PackedLinearMethod,
    PackedWeights,
    check_divisible,
    new_param,
)


class AWQConfig(QuantizationConfig):
    def __init__(
        self, weight_bits: int, group_size: int, zero_point: bool, skipped: list[str]
    ) -> None:
        if weight_bits != 4:
            raise ValueError(f"AWQ supports 4-bit weights only, got {weight_bits} bits")
        if not zero_point:
            raise ValueError("AWQ without zero points (zero_point=false) is not supported")
        self.weight_bits = weight_bits
        self.group_size = group_size
        self.zero_point = zero_point
        self.modules_to_not_convert = skipped

    @classmethod
    def get_name(cls) -> str:
        return "awq"

    @classmethod
    def from_config(cls, hf_quant_config: dict[str, Any]) -> AWQConfig:
        get = cls.get_from_keys
        return cls(
            int(get(hf_quant_config, ["w_bit", "bits"], 4)),
            int(get(hf_quant_config, ["q_group_size", "group_size"], 128)),
            bool(get(hf_quant_config, ["zero_point"], True)),
            list(get(hf_quant_config, ["modules_to_not_convert"]) or []),
        )

    def get_quant_method(self, layer: nn.Module, prefix: str) -> LinearMethodBase | None:
        if is_layer_skipped(prefix, self.modules_to_not_convert):
            return None
        return AWQLinearMethod(self)


class AWQLinearMethod(PackedLinearMethod):
    def __init__(self, config: AWQConfig) -> None:
        self.config = config
        self.bits = config.weight_bits
        self.group_size = config.group_size

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
        group = self.group_size if self.group_size != -1 else input_size
        check_divisible(k, group, "input size per partition vs AWQ group_size")
        for size in output_partition_sizes:
            check_divisible(size, 8, "output size per partition (AWQ packs 8 columns)")
        packed = {"input_dim": 0, "output_dim": 1, "packed_dim": 1, "packed_factor": 8}
        new_param(layer, "qweight", (k, n // 8), torch.int32, **packed)
        new_param(layer, "qzeros", (k // group, n // 8), torch.int32, **packed)
        new_param(
            layer,
            "scales",
            (k // group, n),
            params_dtype,
            input_dim=0,
            output_dim=1,
            dummy_range=SCALE_DUMMY_RANGE,
        )

    def to_common(self, layer: Any) -> PackedWeights:
        codes = unpack_cols(layer.qweight.data, 4, AWQ_ORDER)  # [K, N]
        zeros = unpack_cols(layer.qzeros.data, 4, AWQ_ORDER)
        scales = layer.scales.data
        return PackedWeights(pack_rows(codes, 4), scales, zeros.to(scales.dtype))
