"""The shared part of the packed integer methods (AWQ, GPTQ, SqueezeLLM): after
loading, each converts its checkpoint layout to the common K-packed layout
(int_packing.py), which one Triton kernel multiplies on the GPU; the CPU dequantizes
the weight for each call (float32 or the activation dtype) and multiplies with it.

After `process_weights_after_loading` the layer holds:
    qweight [K/p, N] int32     K-packed codes, rows in kernel order
    scales, zeros [G, N]       (affine methods) zeros unpacked, in the scales' dtype
    lookup_table [N, 16]       (SqueezeLLM)
    g_idx [K] int32            only where groups are not k // group_size
    perm [K] int64             only where act-order sorted the rows: x[:, perm]
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagedllm.layers.quantization.base_config import LinearMethodBase, set_weight_attrs
from pagedllm.layers.quantization.int_packing import dequantize_ref

SCALE_DUMMY_RANGE = (1e-4, 2e-4)  # dummy weights (q - z) * s stay within ~3e-3


@dataclass
class PackedWeights:
    qweight: torch.Tensor
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    lookup_table: torch.Tensor | None = None
    g_idx: torch.Tensor | None = None
    perm: torch.Tensor | None = None


def new_param(
    layer: nn.Module, name: str, shape: tuple[int, ...], dtype: torch.dtype, **attrs: object
) -> nn.Parameter:
    param = nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)
    set_weight_attrs(param, attrs)
    layer.register_parameter(name, param)
    return param


def check_divisible(value: int, by: int, what: str) -> None:
    if value % by != 0:
        raise ValueError(f"{what} ({value}) is not a multiple of {by}")


class PackedLinearMethod(LinearMethodBase):
    bits: int = 4
    group_size: int = -1  # -1: one group over the whole input

    @abstractmethod
    def to_common(self, layer: Any) -> PackedWeights:
        """The loaded checkpoint tensors in the common layout."""

    def process_weights_after_loading(self, layer: Any) -> None:
        packed = self.to_common(layer)
        for name in [n for n in layer._parameters if n != "bias"]:
            delattr(layer, name)
        for name, value in vars(packed).items():
            if value is not None:
                layer.register_parameter(
                    name, nn.Parameter(value.contiguous(), requires_grad=False)
                )
        layer.quant_group_size = self._group_rows(layer)

    def _group_rows(self, layer: Any) -> int:
        k = layer.qweight.shape[0] * (32 // self.bits)
        return k if self.group_size == -1 else self.group_size

    def apply(self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        perm = getattr(layer, "perm", None)
        if perm is not None:
            x2 = x2[:, perm]
        y = self._matmul(layer, x2)
        if bias is not None:
            y = y + bias
        return y.reshape(*shape[:-1], y.shape[-1])

    def _matmul(self, layer: Any, x: torch.Tensor) -> torch.Tensor:
        scales, zeros, lut = (getattr(layer, n, None) for n in ("scales", "zeros", "lookup_table"))
        g_idx = getattr(layer, "g_idx", None)
        group = int(layer.quant_group_size)
        if x.is_cuda:
            from pagedllm.layers.kernels.triton_quant_gemm import quant_gemm
            from pagedllm.layers.quantization import kernel_table

            x = x.contiguous()
            rows = x.shape[0]
            affine = lut is None and scales is not None and zeros is not None
            if affine and rows >= kernel_table.INT_DEQUANT_MIN_ROWS:
                from pagedllm.layers.kernels.triton_quant_dequant import dequantize_packed

                assert scales is not None and zeros is not None
                w = dequantize_packed(
                    layer.qweight, self.bits, group, scales, zeros, x.dtype, g_idx
                )
                return x @ w
            if affine and g_idx is None:
                assert scales is not None and zeros is not None
                y = decode_gemv(x, layer.qweight, self.bits, group, scales, zeros)
                if y is not None:
                    return y
            return quant_gemm(x, layer.qweight, self.bits, group, scales, zeros, g_idx, lut)
        weight = dequantize_ref(layer.qweight, self.bits, scales, zeros, g_idx, group, lut)
        return x @ weight.to(x.dtype)


def decode_gemv(
    x: torch.Tensor,  # [M, K] on CUDA (or CPU under TRITON_INTERPRET=1)
    qweight: torch.Tensor,
    bits: int,
    group: int,
    scales: torch.Tensor,
    zeros: torch.Tensor,
) -> torch.Tensor | None:
    """The few-row GEMV that kernel_table picks for x's row count: the wide one
    (triton_quant_gemv_wide) up to INT_GEMV_WIDE_MAX_ROWS, then triton_quant_gemv up to
    INT_GEMV_MAX_ROWS; None above both (the caller's tensor-core kernel)."""
    from pagedllm.layers.kernels import triton_quant_gemv_wide as wide
    from pagedllm.layers.kernels.triton_quant_gemv import quant_gemv
    from pagedllm.layers.quantization import kernel_table

    rows = x.shape[0]
    if rows <= kernel_table.INT_GEMV_WIDE_MAX_ROWS and wide.supports(group, bits):
        return wide.quant_gemv_wide(x, qweight, bits, group, scales, zeros)
    if rows <= kernel_table.INT_GEMV_MAX_ROWS:
        return quant_gemv(x, qweight, bits, group, scales, zeros)
    return None


def sort_act_order(
    g_idx: torch.Tensor, group_size: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(perm, g_idx sorted) for act-order rows; (None, None) when the rows already run
    group by group; perm None but g_idx kept when sorted yet irregular (a TP shard)."""
    k = g_idx.shape[0]
    plain = torch.arange(k, device=g_idx.device) // group_size
    if torch.equal(g_idx.long(), plain):
        return None, None
    perm = torch.argsort(g_idx.long(), stable=True)
    sorted_g = g_idx[perm].to(torch.int32)
    if torch.equal(sorted_g.long(), plain):
        return perm, None
    return perm, sorted_g
