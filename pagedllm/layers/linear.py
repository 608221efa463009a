"""Tensor-parallel linear layers (vLLM's split: column-parallel in, row-parallel out).

A layer's parameters are made by its quant method (`layers/quantization/`): plain
weights are W [out_per_rank, in_per_rank] like nn.Linear; quantized ones are packed
tensors and group scales. Every parameter carries a `weight_loader(param,
loaded_weight, shard_id=None)` that takes the full HF tensor and copies this rank's
shard into `param`, along the dims the parameter names (`output_dim`, `input_dim`;
offsets along a `packed_dim` are divided by its `packed_factor`).

    ColumnParallelLinear: W [out, in]  -> rank r holds rows    [r*out/tp, (r+1)*out/tp)
    RowParallelLinear:    W [out, in]  -> rank r holds columns [r*in/tp,  (r+1)*in/tp)
                                          and the partial outputs are summed (all-reduce)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.distributed.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from pagedllm.layers.quantization import get_current_quant_config
from pagedllm.layers.quantization.base_config import (
    LinearMethodBase,
    QuantizationConfig,
    set_weight_attrs,
)
from pagedllm.layers.quantization.unquantized import UnquantizedLinearMethod
from pagedllm.layers.weight_loading import (
    copy_shard,
    default_weight_loader,
    load_fused,
    load_part,
    load_shard_indexed,
    load_whole,
)

__all__ = ["default_weight_loader"]  # re-exported for the model files


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    if numerator % denominator != 0:
        raise ValueError(
            f"{what} ({numerator}) is not divisible by tensor_parallel_size ({denominator})"
        )
    return numerator // denominator


class LinearBase(nn.Module):
    """y = x W^T + b through the layer's quant method. `in_features`/`out_features`
    are this rank's sizes; `output_partition_sizes` this rank's fused parts."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        output_partition_sizes: list[int] | None = None,
        input_size: int | None = None,
        output_size: int | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.in_features = in_features
        self.out_features = out_features
        self.input_size = input_size or in_features
        self.output_size = output_size or out_features
        self.output_partition_sizes = output_partition_sizes or [out_features]
        self.params_dtype = torch.get_default_dtype()
        self.prefix = prefix
        config = get_current_quant_config()
        method = config.get_quant_method(self, prefix) if config is not None else None
        self.set_quant_method(method or UnquantizedLinearMethod())
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.empty(out_features), requires_grad=False
            )
            set_weight_attrs(self.bias, {"output_dim": 0, "weight_loader": self.weight_loader})
        else:
            self.register_parameter("bias", None)

    def set_quant_method(self, method: LinearMethodBase) -> None:
        """(Re)create the weight parameters (not the bias) through `method`."""
        for name in [n for n in self._parameters if n != "bias"]:
            delattr(self, name)
        self.quant_method = method
        method.create_weights(
            self,
            self.in_features,
            self.output_partition_sizes,
            self.input_size,
            self.output_size,
            self.params_dtype,
        )
        for name, param in self._parameters.items():
            if name != "bias" and param is not None and not hasattr(param, "weight_loader"):
                param.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    @property
    def is_quantized(self) -> bool:
        return not isinstance(self.quant_method, UnquantizedLinearMethod)

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)


def resolve_quant_methods(model: nn.Module, config: QuantizationConfig | None) -> None:
    """Ask `config` again with each linear layer's full name; a layer it leaves out
    (None: modules_to_not_convert, ignored_layers) becomes a float layer."""
    if config is None:
        return
    for name, module in model.named_modules():
        if isinstance(module, LinearBase):
            module.prefix = module.prefix or name
            if config.get_quant_method(module, module.prefix) is None and module.is_quantized:
                module.set_quant_method(UnquantizedLinearMethod())


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = True, prefix: str = ""
    ) -> None:
        super().__init__(input_size, output_size, bias, prefix=prefix)

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        load_whole(param, loaded_weight)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; `gather_output` all-gathers them back."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = False,
        output_sizes: list[int] | None = None,
        prefix: str = "",
    ) -> None:
        tp = get_tensor_model_parallel_world_size()
        parts = [divide(size, tp, "output size") for size in (output_sizes or [output_size])]
        super().__init__(
            input_size,
            divide(output_size, tp, "output size"),
            bias,
            output_partition_sizes=parts,
            input_size=input_size,
            output_size=output_size,
            prefix=prefix,
        )
        self.gather_output = gather_output

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        if getattr(param, "output_dim", None) is None:
            load_whole(param, loaded_weight)
            return
        size = self.out_features
        load_part(param, loaded_weight, 0, size, self.tp_rank * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.quant_method.apply(self, x, self.bias)
        return tensor_model_parallel_all_gather(y, dim=-1) if self.gather_output else y


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate_up_proj): shard_id is the
    index into `output_sizes`; each part is split across ranks on its own."""

    def __init__(
        self, input_size: int, output_sizes: list[int], bias: bool = True, prefix: str = ""
    ) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(
            input_size, sum(output_sizes), bias, output_sizes=output_sizes, prefix=prefix
        )

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        if shard_id is None:  # a checkpoint that already fuses the parts
            load_fused(self.weight_loader, param, loaded_weight, list(enumerate(self.output_sizes)))
            return
        if getattr(param, "shard_indexed", False):
            load_shard_indexed(param, loaded_weight, shard_id)
            return
        if getattr(param, "output_dim", None) is None:
            load_whole(param, loaded_weight)
            return
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        load_part(param, loaded_weight, offset, size, self.tp_rank * size)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection; output = [q heads | k heads | v heads] of this rank.

    With tp_size > num_kv_heads each kv head is replicated on tp_size / num_kv_heads
    ranks (vLLM's behaviour), so every rank holds exactly one kv head.
    """

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        total_num_heads: int,
        total_num_kv_heads: int | None = None,
        bias: bool = True,
        prefix: str = "",
    ) -> None:
        tp = get_tensor_model_parallel_world_size()
        kv = total_num_kv_heads or total_num_heads
        self.head_size = head_size
        self.num_heads = divide(total_num_heads, tp, "num_attention_heads")
        if tp >= kv:
            if tp % kv != 0:
                raise ValueError(
                    f"tensor_parallel_size ({tp}) must be a multiple of num_key_value_heads ({kv})"
                )
            self.num_kv_heads, self.num_kv_head_replicas = 1, tp // kv
        else:
            self.num_kv_heads, self.num_kv_head_replicas = divide(kv, tp, "num_key_value_heads"), 1
        q, k = self.num_heads * head_size * tp, self.num_kv_heads * head_size * tp
        super().__init__(hidden_size, q + 2 * k, bias, output_sizes=[q, k, k], prefix=prefix)

    def _shard_layout(self, shard_id: str) -> tuple[int, int, int]:
        """(offset in this rank's output, size, start in the full HF tensor)."""
        q_size = self.num_heads * self.head_size
        kv_size = self.num_kv_heads * self.head_size
        if shard_id == "q":
            return 0, q_size, self.tp_rank * q_size
        kv_start = (self.tp_rank // self.num_kv_head_replicas) * kv_size
        if shard_id == "k":
            return q_size, kv_size, kv_start
        if shard_id == "v":
            return q_size + kv_size, kv_size, kv_start
        raise ValueError(f"unknown qkv shard id {shard_id!r}")

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        if shard_id is None:  # fused [q; k; v] checkpoint tensor (full, unsharded)
            q_total = self.num_heads * self.tp_size * self.head_size
            dim = getattr(param, "output_dim", None)
            full = 0
            if dim is not None:
                factor = getattr(param, "packed_factor", 1)
                full = int(loaded_weight.shape[dim]) * (
                    int(factor) if getattr(param, "packed_dim", None) == dim else 1
                )
            kv_total = (full - q_total) // 2
            parts = [("q", q_total), ("k", kv_total), ("v", kv_total)]
            load_fused(self.weight_loader, param, loaded_weight, parts)
            return
        if getattr(param, "shard_indexed", False):
            load_shard_indexed(param, loaded_weight, "qkv".index(shard_id))
            return
        if getattr(param, "output_dim", None) is None:
            load_whole(param, loaded_weight)
            return
        offset, size, start = self._shard_layout(shard_id)
        load_part(param, loaded_weight, offset, size, start)


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs summed over the group.
    The bias is added once, after the reduction."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        reduce_results: bool = True,
        prefix: str = "",
    ) -> None:
        tp = get_tensor_model_parallel_world_size()
        super().__init__(
            divide(input_size, tp, "input size"),
            output_size,
            bias,
            input_size=input_size,
            output_size=output_size,
            prefix=prefix,
        )
        self.reduce_results = reduce_results

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        dim = getattr(param, "input_dim", None)
        if dim is None:  # bias, per-channel scales: replicated
            load_whole(param, loaded_weight)
            return
        copy_shard(param, loaded_weight, dim, self.tp_rank * param.shape[dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.quant_method.apply(self, x, self.bias)
        y = self.quant_method.apply(self, x)
        if self.reduce_results:
            y = tensor_model_parallel_all_reduce(y)
        return y + self.bias if self.bias is not None else y
