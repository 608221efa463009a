"""The attention layer models call: write this step's keys/values into the paged
cache, then attend through the backend chosen for the engine."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.layers.attention.backend import AttentionBackend
from pagedllm.layers.attention.graph_break import active_handler
from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.layers.attention.torch_backend import TorchAttentionBackend, attention_without_cache


class Attention(nn.Module):
    """q [T, nh*hd], k/v [T, nkv*hd] -> [T, nh*hd].

    `num_heads`/`num_kv_heads` are this rank's heads. An empty `kv_cache` (numel 0)
    means "no cache": every sequence must then be a whole prompt (encoders,
    memory-profiling runs).

    `sliding_window` W: a query at position q sees keys at positions > q - W;
    `logits_soft_cap` c: scores -> c * tanh(scores / c) (Gemma 2). Both backends take
    them per call (the Triton kernels as constexpr-flagged launch arguments); a backend
    that cannot (`supports_window_and_soft_cap` False) sends such a layer to the torch
    backend instead (`needs_torch_fallback`), and the model then runs without CUDA graphs.
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        scale: float,
        num_kv_heads: int | None = None,
        backend: AttentionBackend | None = None,
        causal: bool = True,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads or num_heads
        if num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        self.backend: AttentionBackend = backend or TorchAttentionBackend()
        self.causal = causal
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        handler = active_handler()
        if handler is not None:  # a piecewise CUDA graph capture: see graph_break.py
            return handler(self, q, k, v, kv_cache)
        return self.attend(q, k, v, kv_cache, attn_metadata)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Write the new keys/values to the cache, then attend."""
        num_tokens = q.shape[0]
        query = q.view(num_tokens, self.num_heads, self.head_dim)
        key = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        value = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if kv_cache is None or kv_cache.numel() == 0:
            out = attention_without_cache(
                query, key, value, attn_metadata, self.scale, **self._opts()
            )
        else:
            self.backend.write_kv(key, value, kv_cache, attn_metadata.slot_mapping)
            out = self._forward_backend(query, kv_cache, attn_metadata)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)

    @property
    def has_window_or_soft_cap(self) -> bool:
        return self.sliding_window is not None or self.logits_soft_cap is not None

    @property
    def needs_torch_fallback(self) -> bool:
        return self.has_window_or_soft_cap and not self.backend.supports_window_and_soft_cap

    def _opts(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"causal": self.causal}
        if self.has_window_or_soft_cap:
            opts.update(sliding_window=self.sliding_window, soft_cap=self.logits_soft_cap)
        return opts

    def _forward_backend(
        self, query: torch.Tensor, kv_cache: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        backend = _TORCH_FALLBACK if self.needs_torch_fallback else self.backend
        return backend.forward(query, kv_cache, attn_metadata, self.scale, **self._opts())

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, backend={self.backend.name}"
        )


_TORCH_FALLBACK = TorchAttentionBackend()


def needs_torch_attention(model: nn.Module) -> bool:
    """Whether some layer of `model` attends through the torch fallback (no CUDA graphs)."""
    return any(isinstance(m, Attention) and m.needs_torch_fallback for m in model.modules())


def set_attention_backend(model: nn.Module, backend: AttentionBackend) -> int:
    """Use `backend` in every Attention layer of `model`; returns how many were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.backend = backend
            count += 1
    return count
