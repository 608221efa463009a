"""GPTQ (vLLM's `gptq`): 4- or 8-bit weights packed along the input features, group
scales and zero points, optional act-order (`desc_act`, rows grouped by `g_idx`).

Zero points follow the original GPTQ ("v1") checkpoint convention that AutoGPTQ
writes and vLLM reads: the stored code is z - 1 (so a symmetric 4-bit model stores
7 for z = 8); `checkpoint_format: "gptq_v2"` stores z itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.layers.quantization.base_config import (
    LinearMethodBase,
    QuantizationConfig,
    is_layer_skipped,
)
from pagedllm.layers.quantization.int_packing import pack_rows, unpack_cols, unpack_rows
from pagedllm.layers.quantization.packed_linear import (
    SCALE_DUMMY_RANGE,
    PackedLinearMethod,
    PackedWeights,
    check_divisible,
    new_param,
    sort_act_order,
)


class GPTQConfig(QuantizationConfig):
    def __init__(
        self,
        weight_bits: int,
        group_size: int,
        desc_act: bool,
        zero_offset: int,
        skipped: list[str],
    ) -> None:
        if weight_bits not in (4, 8):
            raise ValueError(f"GPTQ supports 4- and 8-bit weights here, got {weight_bits} bits")
        self.weight_bits = weight_bits
        self.group_size = group_size
        self.desc_act = desc_act
        self.zero_offset = zero_offset  # added to stored zero points (1 for v1)
        self.modules_to_not_convert = skipped

    @classmethod
    def get_name(cls) -> str:
        return "gptq"

    @classmethod
    def from_config(cls, hf_quant_config: dict[str, Any]) -> GPTQConfig:
        get = cls.get_from_keys
        fmt = str(get(hf_quant_config, ["checkpoint_format"], "gptq"))
        return cls(
            int(get(hf_quant_config, ["bits", "w_bit"], 4)),
            int(get(hf_quant_config, ["group_size"], 128)),
            bool(get(hf_quant_config, ["desc_act"], False)),
            0 if fmt == "gptq_v2" else 1,
            list(get(hf_quant_config, ["modules_to_not_convert"]) or []),
        )

    def get_quant_method(self, layer: nn.Module, prefix: str) -> LinearMethodBase | None:
        if is_layer_skipped(prefix, self.modules_to_not_convert):
            return None
        return GPTQLinearMethod(self)


class GPTQLinearMethod(PackedLinearMethod):
    def __init__(self, config: GPTQConfig) -> None:
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
        k, n, pack = input_size_per_partition, sum(output_partition_sizes), 32 // self.bits
        group = self.group_size if self.group_size != -1 else input_size
        check_divisible(k, pack, "input size per partition (GPTQ packs along the input)")
        for size in output_partition_sizes:
            check_divisible(size, pack, "output size per partition (GPTQ packs zero points)")
        # Scales/zeros shard with the input, except one group over everything or an
        # act-order model split by rows: then every rank holds all groups.
        sharded = self.group_size != -1 and not (self.config.desc_act and k != input_size)
        if sharded:
            check_divisible(k, group, "input size per partition vs GPTQ group_size")
        groups = k // group if sharded else max(1, input_size // group)
        sz_input = {"input_dim": 0} if sharded else {}
        new_param(
            layer,
            "qweight",
            (k // pack, n),
            torch.int32,
            input_dim=0,
            output_dim=1,
            packed_dim=0,
            packed_factor=pack,
        )
        new_param(
            layer,
            "g_idx",
            (k,),
            torch.int32,
            input_dim=0,
            dummy_fill=lambda p, _gen: p.copy_(torch.arange(k, device=p.device) // group),
        )
        new_param(
            layer,
            "qzeros",
            (groups, n // pack),
            torch.int32,
            output_dim=1,
            packed_dim=1,
            packed_factor=pack,
            **sz_input,
        )
        new_param(
            layer,
            "scales",
            (groups, n),
            params_dtype,
            output_dim=1,
            dummy_range=SCALE_DUMMY_RANGE,
            **sz_input,
        )

    def to_common(self, layer: Any) -> PackedWeights:
        bits, scales = self.bits, layer.scales.data
        zeros = unpack_cols(layer.qzeros.data, bits) + self.config.zero_offset
        qweight = layer.qweight.data
        k = qweight.shape[0] * (32 // bits)
        group = self.group_size if self.group_size != -1 else k
        perm, g_idx = (
            sort_act_order(layer.g_idx.data, group) if self.config.desc_act else (None, None)
        )
        if perm is not None:
            qweight = pack_rows(unpack_rows(qweight, bits)[perm], bits)
        return PackedWeights(qweight, scales, zeros.to(scales.dtype), g_idx=g_idx, perm=perm)
