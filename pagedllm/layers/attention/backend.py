"""The attention backend interface. Models call `Attention` (layer.py), which
delegates to one backend chosen once per engine: the pure-PyTorch backend (the CPU
path and the oracle) or the Triton backend (NVIDIA GPUs)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from pagedllm.layers.attention.metadata import AttentionMetadata


class AttentionBackend(ABC):
    name: str = "abstract"
    # Whether forward takes `sliding_window` and `soft_cap` (Gemma); layers that need
    # them run the torch backend where this is False (see Attention.attend).
    supports_window_and_soft_cap: bool = False

    @abstractmethod
    def write_kv(
        self,
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [T] int64
    ) -> None:
        """Store the new tokens' keys and values in their slots."""

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
        scale: float,
        causal: bool = True,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        """Attend each query token to its sequence's cached tokens (after write_kv)."""
