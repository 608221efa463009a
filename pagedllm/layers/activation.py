"""Activation functions, by the names HF configs use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.layers.cpu import decode_ops


def silu_and_mul_native(x: torch.Tensor) -> torch.Tensor:  # [..., 2d] -> [..., d]
    """silu(x[..., :d]) * x[..., d:] in torch ops (HF's `act_fn(gate) * up`): the CPU path
    of SiluAndMul and the reference of the Triton kernel (triton_activation.py)."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


class SiluAndMul(nn.Module):
    """x [..., 2d] -> silu(x[..., :d]) * x[..., d:]  (gate_up_proj output). On CUDA one
    Triton kernel (layers/kernels/triton_activation.py, the same rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dim() == 2 and x.stride(-1) == 1:
            # Imported here: triton must not be imported before TRITON_INTERPRET is settled.
            from pagedllm.layers.kernels.triton_activation import silu_and_mul

            return silu_and_mul(x)
        ops = decode_ops.usable(x)
        if ops is not None:
            return ops.silu_and_mul(x)  # type: ignore[no-any-return]
        return silu_and_mul_native(x)


class GeluAndMul(nn.Module):
    """x [..., 2d] -> gelu(x[..., :d]) * x[..., d:] (Gemma's gated MLP)."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.gelu(x[..., :d], approximate=self.approximate) * x[..., d:]


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class NewGELU(nn.Module):
    """The tanh approximation of GELU (GPT-2's "gelu_new")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_new": NewGELU,
    "gelu_fast": NewGELU,
    "gelu_pytorch_tanh": NewGELU,
    "gelu_tanh": NewGELU,
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def get_act_fn(name: str) -> nn.Module:
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[key]()


def get_act_and_mul_fn(name: str) -> nn.Module:
    """The gated (x * act(gate)) activation for an HF `hidden_act` name."""
    key = name.lower()
    if key in ("silu", "swish"):
        return SiluAndMul()
    if key in ("gelu_pytorch_tanh", "gelu_new", "gelu_tanh", "gelu_fast"):
        return GeluAndMul("tanh")
    if key == "gelu":
        return GeluAndMul()
    raise ValueError(f"gated activation {name!r} is not supported")
