"""Attention: metadata, the backend interface, the torch backend and the layer."""

from pagedllm.layers.attention.backend import AttentionBackend
from pagedllm.layers.attention.layer import Attention, set_attention_backend
from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.layers.attention.torch_backend import TorchAttentionBackend

__all__ = [
    "Attention",
    "AttentionBackend",
    "AttentionMetadata",
    "TorchAttentionBackend",
    "set_attention_backend",
]
