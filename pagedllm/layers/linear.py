"""Tensor-parallel linear layers (vLLM's split: column-parallel in, row-parallel out).

Every parameter carries a `weight_loader(param, loaded_weight, shard_id=None)` that
takes the full HF tensor and copies this rank's shard into `param`. Weights are
[out_features, in_features] like nn.Linear.

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
from pagedllm.layers.cpu_linear import linear


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    if numerator % denominator != 0:
        raise ValueError(
            f"{what} ({numerator}) is not divisible by tensor_parallel_size ({denominator})"
        )
    return numerator // denominator


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Copy a whole (unsharded) tensor into `param`, checking the shape."""
    if param.shape != loaded_weight.shape:
        raise ValueError(
            f"weight shape {tuple(loaded_weight.shape)} does not match the parameter "
            f"shape {tuple(param.shape)}"
        )
    with torch.no_grad():
        param.copy_(loaded_weight)


def _copy_shard(param: torch.Tensor, loaded: torch.Tensor, dim: int, start: int) -> None:
    shard = loaded.narrow(dim, start, param.shape[dim]) if loaded.dim() > dim else loaded
    default_weight_loader(param, shard)


def _new_param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


class LinearBase(nn.Module):
    """y = x W^T + b, with W [out_per_rank, in_per_rank]."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = _new_param(out_features, in_features)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if bias:
            self.bias: nn.Parameter | None = _new_param(out_features)
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        else:
            self.register_parameter("bias", None)

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight."""

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        default_weight_loader(param, loaded_weight)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; `gather_output` all-gathers them back."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = True, gather_output: bool = False
    ) -> None:
        tp = get_tensor_model_parallel_world_size()
        super().__init__(input_size, divide(output_size, tp, "output size"), bias)
        self.gather_output = gather_output

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        _copy_shard(param, loaded_weight, 0, self.tp_rank * param.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)
        return tensor_model_parallel_all_gather(y, dim=-1) if self.gather_output else y


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate_up_proj): shard_id is the
    index into `output_sizes`; each part is split across ranks on its own."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = True) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias)
        for size in output_sizes:
            divide(size, self.tp_size, "output size")

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        if shard_id is None:  # a checkpoint that already fuses the parts
            offset = 0
            for idx, size in enumerate(self.output_sizes):
                self.weight_loader(param, loaded_weight.narrow(0, offset, size), idx)
                offset += size
            return
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        _copy_shard(param.data.narrow(0, offset, size), loaded_weight, 0, self.tp_rank * size)


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
        out = (self.num_heads + 2 * self.num_kv_heads) * head_size * tp
        super().__init__(hidden_size, out, bias)

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
            kv_total = (loaded_weight.shape[0] - q_total) // 2
            for sid, start, size in (
                ("q", 0, q_total),
                ("k", q_total, kv_total),
                ("v", q_total + kv_total, kv_total),
            ):
                self.weight_loader(param, loaded_weight.narrow(0, start, size), sid)
            return
        offset, size, start = self._shard_layout(shard_id)
        target = param.data.narrow(0, offset, size)
        default_weight_loader(target, loaded_weight.narrow(0, start, size))


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs summed over the group.
    The bias is added once, after the reduction."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = True, reduce_results: bool = True
    ) -> None:
        tp = get_tensor_model_parallel_world_size()
        super().__init__(divide(input_size, tp, "input size"), output_size, bias)
        self.reduce_results = reduce_results

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        if param.dim() == 1:  # bias: replicated
            default_weight_loader(param, loaded_weight)
            return
        _copy_shard(param, loaded_weight, 1, self.tp_rank * param.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return linear(x, self.weight, self.bias)
        y = linear(x, self.weight)
        if self.reduce_results:
            y = tensor_model_parallel_all_reduce(y)
        return y + self.bias if self.bias is not None else y
