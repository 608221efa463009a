"""FP8 (vLLM's `fp8`): e4m3 weights with per-tensor or per-output-channel scales from
a checkpoint (`quant_method: fp8`), or float weights quantized as they load (online,
per tensor, as vLLM) when `quantization="fp8"` is given for a float checkpoint.

Weight scales after loading: `weight_scale` [N] float32 always; `weight_scale_tensor`
a 0-dim float32 where one scale serves the whole weight (online quantization, or a
checkpoint whose scales are all equal). A fused layer's per-tensor shards (qkv,
gate_up) with different scales keep their per-row scales, applied after the matmul
(exact, one elementwise pass), unless REQUANTIZE_SHARDS: then, as vLLM does, the
shards are requantized to the largest scale, which re-rounds every value of the other
shards to e4m3 (up to 1/16 relative error per weight, as much as fp8 itself).

GPU (compute capability >= 8.9), by rows m (kernel_table.py):
  m <= FP8_GEMV_MAX_ROWS: weight-only GEMV (triton_fp8.fp8_gemv), activations stay in
      their dtype, the per-channel scale in its epilogue;
  else: activations quantized per tensor (dynamic, one or two Triton kernels) or with
      the checkpoint's `input_scale` (static), then `torch._scaled_mm` with tensor-wise
      scales (cuBLASLt, faster than the row-wise CUTLASS path); a per-channel weight
      scale multiplies the output afterwards.
Elsewhere (CPU, older GPUs) the weight is dequantized for each call and the
activations stay in their dtype (weight-only).
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

    def get_quant_method(self, layer: nn.Module, prefix: str) -> LinearMethodBase | None:
        if is_layer_skipped(prefix, self.ignored_layers):
            return None
        return Fp8LinearMethod(self)


MAX_SHARD_SCALES = 4  # distinct per-tensor scales of a fused layer (qkv: 3, gate_up: 2)
REQUANTIZE_SHARDS = False  # vLLM's lossy choice: one scale per fused layer


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight [N, K], float32 scales [N, 1]) with W ~ q * scale."""
    scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def quantize_per_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, float32 0-dim scale) with W ~ q * scale."""
    scale = weight.float().abs().amax().clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def to_per_tensor(
    weight: torch.Tensor, scale: torch.Tensor, requantize: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, 0-dim scale) when the rows' scales [N] are all equal, or take at most
    MAX_SHARD_SCALES values with REQUANTIZE_SHARDS (fused per-tensor shards, then
    requantized to the largest); (weight, None) otherwise, weight left as it is."""
    values = torch.unique(scale)
    requantize = REQUANTIZE_SHARDS if requantize is None else requantize
    limit = MAX_SHARD_SCALES if requantize else 1
    if values.numel() > limit:
        return weight, None
    top = values.max()
    if values.numel() > 1:
        ratio = (scale / top).reshape(-1, 1)
        weight = (weight.float() * ratio).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return weight, top.reshape(())


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
            weight, tensor_scale = to_per_tensor(layer.weight.data, layer.weight_scale.data)
            scale = layer.weight_scale.data.reshape(-1).float()
        else:
            weight, tensor_scale = quantize_per_tensor(layer.weight.data)
        if tensor_scale is not None:
            scale = tensor_scale.expand(weight.shape[0])
        _replace(layer, "weight", weight.contiguous())
        _replace(layer, "weight_scale", scale.float().contiguous())  # [N]
        layer.weight_scale_tensor = tensor_scale
        layer.unit_scale = torch.ones((), dtype=torch.float32, device=weight.device)
        if self.config.activation_scheme == "static":
            _replace(layer, "input_scale", layer.input_scale.data.max().reshape(()))
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
            weight = (layer.weight.float() * layer.weight_scale[:, None]).to(x.dtype)
            y = linear(x2, weight, bias)
        return y.reshape(*shape[:-1], y.shape[-1])

    def _scaled_mm(self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        from pagedllm.layers.kernels import triton_fp8
        from pagedllm.layers.quantization import kernel_table

        if x.shape[0] <= kernel_table.FP8_GEMV_MAX_ROWS:
            y = triton_fp8.fp8_gemv(x.contiguous(), layer.weight, layer.weight_scale)
            return y + bias if bias is not None else y
        static = self.config.activation_scheme == "static"
        x_scale = layer.input_scale if static else None
        if kernel_table.FP8_ACT_QUANT_TRITON:
            x_q, x_scale = triton_fp8.quantize_per_tensor(x.contiguous(), x_scale)
        else:
            x_q, x_scale = triton_fp8.quantize_per_tensor_ref(x, x_scale)
        per_tensor = layer.weight_scale_tensor is not None
        y = torch._scaled_mm(
            x_q,
            layer.weight.t(),
            scale_a=x_scale,
            scale_b=layer.weight_scale_tensor if per_tensor else layer.unit_scale,
            out_dtype=x.dtype,
        )
        if not per_tensor:
            y = y * layer.weight_scale.to(y.dtype)
        return y + bias if bias is not None else y


def _replace(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in layer._parameters:
        delattr(layer, name)
    layer.register_parameter(name, nn.Parameter(value, requires_grad=False))
