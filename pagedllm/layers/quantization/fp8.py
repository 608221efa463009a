"""FP8 (vLLM's `fp8`): e4m3 weights with per-tensor or per-output-channel scales from
a checkpoint (`quant_method: fp8`), or float weights quantized as they load (online,
per output channel) when `quantization="fp8"` is given for a float checkpoint.

GPU (compute capability >= 8.9): activations are quantized per token (dynamic) or
with the checkpoint's `input_scale` (static) and multiplied by `torch._scaled_mm`
with row-wise scales. Elsewhere (CPU, older GPUs) the weight is dequantized for each
call and the activations stay in their dtype (weight-only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.layers.cpu_linear import linear
from pagedllm.layers.quantization.base_config import (
    LinearMethodBase,
    QuantizationConfig,
    is_layer_skipped,
)
from pagedllm.layers.quantization.packed_linear import new_param

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


class Fp8Config(QuantizationConfig):
    def __init__(self, serialized: bool, activation_scheme: str, ignored: list[str]) -> None:
        if activation_scheme not in ("dynamic", "static"):
            raise ValueError(
                f"fp8 activation_scheme must be dynamic or static, got {activation_scheme!r}"
            )
        self.is_checkpoint_fp8_serialized = serialized
        self.activation_scheme = activation_scheme if serialized else "dynamic"
        self.ignored_layers = ignored

    @classmethod
    def get_name(cls) -> str:
        return "fp8"

    @classmethod
    def from_config(cls, hf_quant_config: dict[str, Any]) -> Fp8Config:
        get = cls.get_from_keys
        if get(hf_quant_config, ["weight_block_size"]):
            raise ValueError("block-wise fp8 (weight_block_size) is not supported")
        serialized = "fp8" in str(get(hf_quant_config, ["quant_method"], ""))
        return cls(
            serialized,
            str(get(hf_quant_config, ["activation_scheme"], "dynamic")),
            list(get(hf_quant_config, ["ignored_layers", "modules_to_not_convert"]) or []),
        )

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16, torch.float32]

    def get_quant_method(self, layer: nn.Module, prefix: str) -> LinearMethodBase | None:
        if is_layer_skipped(prefix, self.ignored_layers):
            return None
        return Fp8LinearMethod(self)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight [N, K], float32 scales [N, 1]) with W ~ q * scale."""
    scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8LinearMethod(LinearMethodBase):
    def __init__(self, config: Fp8Config) -> None:
        self.config = config

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
    ) -> None:
        n, k = sum(output_partition_sizes), input_size_per_partition
        if not self.config.is_checkpoint_fp8_serialized:
            new_param(layer, "weight", (n, k), params_dtype, output_dim=0, input_dim=1)
            return
        new_param(layer, "weight", (n, k), FP8, output_dim=0, input_dim=1)
        new_param(
            layer,
            "weight_scale",
            (n, 1),
            torch.float32,
            output_dim=0,
            broadcast_scalar=True,
            dummy_range=(1e-4, 2e-4),
        )
        if self.config.activation_scheme == "static":
            shards = len(output_partition_sizes)
            new_param(layer, "input_scale", (shards,), torch.float32, shard_indexed=True)

    def process_weights_after_loading(self, layer: Any) -> None:
        if self.config.is_checkpoint_fp8_serialized:
            weight, scale = layer.weight.data, layer.weight_scale.data
        else:
            weight, scale = quantize_per_channel(layer.weight.data)
        _replace(layer, "weight", weight.contiguous())
        _replace(layer, "weight_scale", scale.reshape(1, -1).contiguous())  # [1, N]
        if self.config.activation_scheme == "static":
            _replace(layer, "input_scale", layer.input_scale.data.max().reshape(1, 1))
        n, k = weight.shape
        layer.use_scaled_mm = (
            weight.is_cuda
            and torch.cuda.get_device_capability(weight.device) >= (8, 9)
            and n % 16 == 0
            and k % 16 == 0
        )

    def apply(self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if layer.use_scaled_mm:
            y = self._scaled_mm(layer, x2, bias)
        else:
            weight = (layer.weight.float() * layer.weight_scale.reshape(-1, 1)).to(x.dtype)
            y = linear(x2, weight, bias)
        return y.reshape(*shape[:-1], y.shape[-1])

    def _scaled_mm(self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.config.activation_scheme == "static":
            x_scale = layer.input_scale.expand(x.shape[0], 1).contiguous()
        else:
            x_scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
        x_q = (x.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        y = torch._scaled_mm(
            x_q,
            layer.weight.t(),
            scale_a=x_scale,
            scale_b=layer.weight_scale,
            out_dtype=torch.bfloat16,  # row-wise scaling produces bfloat16
        )
        y = y.to(x.dtype)
        return y + bias if bias is not None else y


def _replace(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in layer._parameters:
        delattr(layer, name)
    layer.register_parameter(name, nn.Parameter(value, requires_grad=False))
