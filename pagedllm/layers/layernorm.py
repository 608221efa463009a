"""Normalization layers. RMSNorm can fuse the residual add (vLLM's convention):

forward(x)           -> norm(x)
forward(x, residual) -> (norm(x + residual), x + residual)

On CUDA tensors RMSNorm runs as one fused Triton kernel (layers/kernels/triton_rms_norm.py, the
same rounding as the torch code here); elsewhere it runs as torch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.layers.cpu import decode_ops


def rms_norm_native(
    x: torch.Tensor,  # [..., hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    weight_offset: float = 0.0,
) -> torch.Tensor:  # like x (weight's dtype if wider and no offset: HF's promotion)
    """HF's RMSNorm arithmetic in torch ops: normalise in float32, round to x.dtype, times
    weight (Gemma: times offset + weight in float32, rounded once). The CPU path of
    RMSNorm and the reference of the Triton kernel (triton_rms_norm.py)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight_offset:
        return (xf * (weight.float() + weight_offset)).to(dtype)
    return weight * xf.to(dtype)


class RMSNorm(nn.Module):
    """y = x / rms(x) * (offset + weight), computed in float32 (offset 1.0: Gemma)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, weight_offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.variance_epsilon = eps
        self.weight_offset = weight_offset

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_native(x, self.weight, self.variance_epsilon, self.weight_offset)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.is_cuda and not self.weight_offset and x.shape[-1] > 1 and x.stride(-1) == 1:
            return _fused_rms_norm(x, self.weight, self.variance_epsilon, residual)
        if (
            x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not self.weight_offset
        ):
            ops = decode_ops.usable(x)
            if ops is not None and (residual is None or residual.shape == x.shape):
                if residual is None:
                    return ops.rms_norm(x, self.weight, self.variance_epsilon)
                return tuple(ops.add_rms_norm(x, residual, self.weight, self.variance_epsilon))
            # float32: torch's one-kernel rms_norm is the same arithmetic as _norm.
            if residual is not None:
                x = x + residual
                return F.rms_norm(x, (x.shape[-1],), self.weight, self.variance_epsilon), x
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.variance_epsilon)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x


def _fused_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    # Imported here: triton must not be imported before TRITON_INTERPRET is settled.
    from pagedllm.layers.kernels.triton_rms_norm import rms_norm

    if x.dim() > 3 or (residual is not None and residual.stride(-1) != 1):
        x = x.contiguous()
        residual = None if residual is None else residual.contiguous()
    out, new_residual = rms_norm(x, weight, eps, residual)
    return out if new_residual is None else (out, new_residual)


class LayerNorm(nn.LayerNorm):
    """torch's LayerNorm with frozen parameters (inference only)."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__(hidden_size, eps=eps, elementwise_affine=elementwise_affine, bias=bias)
        for param in self.parameters():
            param.requires_grad_(False)
