"""Choose the attention backend once per engine: Triton on NVIDIA GPUs, pure
PyTorch elsewhere (and as the oracle). PAGEDLLM_ATTENTION_BACKEND=torch|triton
overrides the choice."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pagedllm.layers.attention.backend import AttentionBackend

logger = logging.getLogger(__name__)


def get_attention_backend(device: torch.device) -> AttentionBackend:
    name = os.environ.get("PAGEDLLM_ATTENTION_BACKEND") or (
        "triton" if device.type == "cuda" else "torch"
    )
    if name not in ("torch", "triton"):
        raise ValueError(f"PAGEDLLM_ATTENTION_BACKEND must be 'torch' or 'triton', got {name!r}")
    if name == "triton":
        from pagedllm.layers.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    from pagedllm.layers.attention.torch_backend import TorchAttentionBackend

    return TorchAttentionBackend()


def attach_attention_backend(model: nn.Module, device: torch.device) -> AttentionBackend:
    from pagedllm.layers.attention.layer import set_attention_backend

    backend = get_attention_backend(device)
    set_attention_backend(model, backend)
    logger.info("Attention backend: %s", type(backend).__name__)
    return backend
