"""`quantization="gguf"`: GGUF weights kept in their blocks (repacked once, see
gguf_repack.py) and multiplied by the packed CPU kernel (gguf_kernels.py).

The GGUF loader (model_loader/gguf.py) yields each quantized tensor as its raw
blocks, uint8 [rows, row_bytes] with the attribute `gguf_qtype`; float tensors
(F32/F16 files, other architectures) come as float tensors. One linear layer may
fuse parts of different types (q/k/v of a Q4_K_M file are Q4_K and Q6_K), so each
part is kept on its own and, where all parts share one packed layout, they are
concatenated into one matrix after loading:

    parts [q (Q4_K), k (Q4_K), v (Q6_K)] -> [PackedGGUF(q;k), PackedGGUF(v)]
    y = cat([x W_0^T, x W_1^T], -1)

Tensor parallelism splits raw rows (column-parallel) or whole blocks of each row
(row-parallel: in_per_rank must be a multiple of the type's block size).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.layers.cpu_linear import linear
from pagedllm.layers.quantization.base_config import LinearMethodBase, QuantizationConfig
from pagedllm.layers.quantization.gguf_kernels import gguf_linear
from pagedllm.layers.quantization.gguf_repack import PackedGGUF, repack
from pagedllm.layers.quantization.gguf_types import BLOCK_SIZES

GGUFPart = PackedGGUF | torch.Tensor  # a float part: weight [rows, K]


def gguf_qtype(tensor: torch.Tensor) -> int | None:
    """The GGUF block type of a raw tensor from the loader (None: a float tensor)."""
    qtype = getattr(tensor, "gguf_qtype", None)
    return int(qtype) if qtype is not None else None


def mark_gguf(raw: torch.Tensor, qtype: int) -> torch.Tensor:
    raw.gguf_qtype = qtype  # type: ignore[attr-defined]
    return raw


class GGUFConfig(QuantizationConfig):
    @classmethod
    def get_name(cls) -> str:
        return "gguf"

    @classmethod
    def from_config(cls, hf_quant_config: dict[str, Any]) -> GGUFConfig:
        return cls()

    def get_quant_method(self, layer: nn.Module, prefix: str) -> LinearMethodBase | None:
        return GGUFLinearMethod()


def _row_range(layer: nn.Module, shard_id: Any) -> tuple[int, int] | None:
    """(start, size) of this rank's output rows of the shard; None: all rows."""
    from pagedllm.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
    )

    if isinstance(layer, QKVParallelLinear):
        _, size, start = layer._shard_layout(shard_id)
        return start, size
    if isinstance(layer, MergedColumnParallelLinear):
        size = layer.output_sizes[shard_id] // layer.tp_size
        return layer.tp_rank * size, size
    if isinstance(layer, ColumnParallelLinear):
        return layer.tp_rank * layer.out_features, layer.out_features
    return None


def _shard(layer: nn.Module, loaded: torch.Tensor, shard_id: Any) -> torch.Tensor:
    """This rank's part of a full checkpoint tensor (raw blocks or float)."""
    from pagedllm.layers.linear import RowParallelLinear

    rows = _row_range(layer, shard_id)
    if rows is not None:
        return loaded.narrow(0, *rows)
    if isinstance(layer, RowParallelLinear) and layer.tp_size > 1:
        k = layer.in_features
        qtype = gguf_qtype(loaded)
        if qtype is None:
            return loaded.narrow(1, layer.tp_rank * k, k)
        block, nbytes = BLOCK_SIZES[qtype]
        if k % block:
            raise ValueError(
                f"{layer.prefix}: {k} input features per rank are not whole GGUF blocks of "
                f"{block}; use a smaller tensor_parallel_size or quantization='none'"
            )
        return loaded.narrow(1, layer.tp_rank * k // block * nbytes, k // block * nbytes)
    return loaded


def _pack_part(tensor: torch.Tensor, qtype: int | None) -> GGUFPart:
    if qtype is None:
        return tensor.float().contiguous()
    return repack(tensor.contiguous(), qtype)


def _layout(part: GGUFPart) -> tuple[Any, ...]:
    if isinstance(part, PackedGGUF):
        return (part.bits, part.group, part.scales.dtype, part.mins is None)
    return ("float", part.dtype)


def _concat(parts: list[GGUFPart]) -> GGUFPart:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat([p for p in parts if isinstance(p, torch.Tensor)])
    packed = [p for p in parts if isinstance(p, PackedGGUF)]
    mins = None if packed[0].mins is None else torch.cat([p.mins for p in packed])  # type: ignore[misc]
    return PackedGGUF(
        torch.cat([p.qweight for p in packed]),
        torch.cat([p.scales for p in packed]),
        mins,
        packed[0].bits,
        packed[0].group,
    )


def merge_parts(parts: list[GGUFPart]) -> list[GGUFPart]:
    """Runs of neighbouring parts with one layout -> one part each."""
    runs: list[list[GGUFPart]] = []
    for part in parts:
        if runs and _layout(runs[-1][-1]) == _layout(part):
            runs[-1].append(part)
        else:
            runs.append([part])
    return [_concat(run) if len(run) > 1 else run[0] for run in runs]


class GGUFLinearMethod(LinearMethodBase):
    """`weight` is a placeholder until loading ends; then `layer.gguf_parts`."""

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
    ) -> None:
        weight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
        weight.weight_loader = self._loader(layer)  # type: ignore[attr-defined]
        layer.register_parameter("weight", weight)
        state: Any = layer
        state.gguf_loaded = {}  # shard id (None: whole) -> GGUFPart
        state.gguf_shard_ids = _shard_ids(layer, len(output_partition_sizes))
        state.gguf_parts = []

    @staticmethod
    def _loader(layer: Any) -> Any:
        def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
            qtype = gguf_qtype(loaded)
            part = _shard(layer, loaded, shard_id).to(param.device)
            layer.gguf_loaded[shard_id] = _pack_part(part, qtype)

        return load

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        state: Any = layer
        loaded: dict[Any, GGUFPart] = state.gguf_loaded
        if not loaded:
            return  # dummy weights or a model built without loading
        ids = [None] if None in loaded else state.gguf_shard_ids
        missing = [sid for sid in ids if sid not in loaded]
        if missing:
            raise ValueError(f"{state.prefix}: GGUF shards {missing} were not loaded")
        state.gguf_parts = merge_parts([loaded[sid] for sid in ids])
        state.gguf_loaded = {}
        for i, part in enumerate(state.gguf_parts):  # buffers: counted with the model's
            for name in ("qweight", "scales", "mins") if isinstance(part, PackedGGUF) else ():
                if getattr(part, name) is not None:
                    layer.register_buffer(f"gguf_{name}_{i}", getattr(part, name), persistent=False)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        state: Any = layer
        parts: list[GGUFPart] = state.gguf_parts
        if not parts:
            raise RuntimeError(f"{state.prefix}: GGUF weights were not loaded")
        outs = [_apply_part(x, part) for part in parts]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return y + bias if bias is not None else y


def _apply_part(x: torch.Tensor, part: GGUFPart) -> torch.Tensor:
    if isinstance(part, PackedGGUF):
        return gguf_linear(x, part)
    return linear(x, part.to(x.dtype))


def _shard_ids(layer: nn.Module, num_parts: int) -> list[Any]:
    from pagedllm.layers.linear import QKVParallelLinear

    if isinstance(layer, QKVParallelLinear):
        return ["q", "k", "v"]
    return list(range(num_parts)) if num_parts > 1 else [None]
