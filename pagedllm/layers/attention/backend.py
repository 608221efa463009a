"""The attention backend interface. Models call `Attention` (layer.py), which
delegates to one backend chosen once per engine: the pure-PyTorch backend (the CPU
path and the oracle) or the Triton backend (NVIDIA GPUs)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from pagedllm.layers.attention.metadata import AttentionMetadata


class AttentionBackend(ABC):
    name: str = "abstract"
    # Whether forward honours `sliding_window` and `soft_cap` (Gemma); layers that need
    # them run the torch backend where this is False (see Attention.attend). Both
    # backends here do; the flag is for others (no CUDA graphs for models that fall back).
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
        sliding_window: int | None = None,
        soft_cap: float | None = None,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        """Attend each query token to its sequence's cached tokens (after write_kv).
        `sliding_window` W: a query at position q sees keys at positions > q - W (HF's
        convention); `soft_cap` c: scores -> c * tanh(scores / c) before the softmax."""
