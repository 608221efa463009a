"""Per-head q/k RMSNorm followed by rotary (Qwen3, Qwen3-MoE, Gemma 3):

    q, k = rotary(positions, norm_q(q per head), norm_k(k per head))

On CUDA, when the shapes allow it, one in-place Triton kernel does both
(layers/kernels/triton_qk_norm_rotary.py, the same roundings: HF's Qwen3RMSNorm then
the neox rotation); elsewhere `forward_native`: the norm modules per head, then the
rotary module. Gemma's (1 + weight) norm always takes the native path.

The norms and the rotary embedding stay attributes of the attention module (their
checkpoint names are `self_attn.q_norm.weight` / `self_attn.k_norm.weight`, and the
rope is shared by every layer): this module only holds references to them, outside
the module tree, so it adds nothing to the state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.layers.layernorm import RMSNorm
from pagedllm.layers.rotary import RotaryEmbedding


class QKNormRotary(nn.Module):
    def __init__(
        self, q_norm: RMSNorm, k_norm: RMSNorm, rotary_emb: RotaryEmbedding, head_dim: int
    ) -> None:
        super().__init__()
        # A tuple is not registered by nn.Module: the owner's names stay the only ones.
        self._parts = (q_norm, k_norm, rotary_emb)
        self.head_dim = head_dim
        self.fusable = _fusable(q_norm, k_norm, rotary_emb, head_dim)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, fusable={self.fusable}"

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        q: torch.Tensor,  # [T, num_heads * head_dim], last dim contiguous
        k: torch.Tensor,  # [T, num_kv_heads * head_dim], last dim contiguous
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed and rotated q, k (on the CUDA path q and k themselves, changed in place)."""
        if self.fusable and q.is_cuda:
            return self.forward_cuda(positions, q, k)
        return self.forward_native(positions, q, k)

    def forward_native(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The norm modules on [T, heads, head_dim] views, then the rotary module."""
        q_norm, k_norm, rotary_emb = self._parts
        q, k = self._norm_heads(q_norm, q), self._norm_heads(k_norm, k)
        return rotary_emb(positions, q, k)

    def forward_cuda(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One in-place Triton kernel (any device under TRITON_INTERPRET=1); needs
        `fusable`."""
        # Imported here: triton must not be imported before TRITON_INTERPRET is settled.
        from pagedllm.layers.kernels.triton_qk_norm_rotary import qk_norm_rotary

        q_norm, k_norm, rotary_emb = self._parts
        num_tokens = q.shape[0]
        qk_norm_rotary(
            positions.long(),  # no copy when already int64
            q.view(num_tokens, -1, self.head_dim),
            k.view(num_tokens, -1, self.head_dim),
            q_norm.weight,
            k_norm.weight,
            q_norm.variance_epsilon,
            rotary_emb.cos_sin_cache,
        )
        return q, k

    def _norm_heads(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        out = norm(x.reshape(x.shape[0], -1, self.head_dim))
        assert isinstance(out, torch.Tensor)  # no residual: one tensor
        return out.reshape(x.shape)


def _fusable(q_norm: RMSNorm, k_norm: RMSNorm, rope: RotaryEmbedding, head_dim: int) -> bool:
    """The kernel's case: plain RMSNorms with one eps (no Gemma offset), a neox
    rotation of the whole head, a power-of-two head."""
    plain = not q_norm.weight_offset and not k_norm.weight_offset
    one_eps = q_norm.variance_epsilon == k_norm.variance_epsilon
    full_neox = rope.is_neox_style and rope.rotary_dim == head_dim
    return plain and one_eps and full_neox and head_dim & (head_dim - 1) == 0
