"""Shared helpers of the model classes: weight loading by HF name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.layers.linear import default_weight_loader

logger = logging.getLogger(__name__)

# (our param name fragment, HF name fragment, shard id): HF tensors fused into one param.
StackedMapping = list[tuple[str, str, Any]]


def load_param(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
    loader = getattr(param, "weight_loader", None)
    if loader is None:
        default_weight_loader(param, loaded)
    elif shard_id is None:
        loader(param, loaded)
    else:
        loader(param, loaded, shard_id)


def load_weights_by_name(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked: StackedMapping,
    rename: Callable[[str], str | None] = lambda name: name,
) -> set[str]:
    """Copy HF tensors into `model`'s params; returns the param names loaded.

    `rename` maps an HF name to this model's name (None: skip the tensor). A name
    containing a `stacked` HF fragment is loaded as one shard of the fused param.
    """
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for hf_name, tensor in weights:
        name = rename(hf_name)
        if name is None:
            continue
        shard_id: Any = None
        for param_frag, hf_frag, sid in stacked:
            if hf_frag in name:
                name, shard_id = name.replace(hf_frag, param_frag), sid
                break
        if name not in params:
            logger.debug("skipping checkpoint tensor %s (no parameter %s)", hf_name, name)
            continue
        load_param(params[name], tensor, shard_id)
        loaded.add(name)
    return loaded


def config_head_dim(config: Any) -> int:
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim) if head_dim else config.hidden_size // config.num_attention_heads


def layer_sliding_window(config: Any, layer_idx: int) -> int | None:
    """The sliding window of decoder layer `layer_idx` as HF applies it, None for full
    attention: with `layer_types` (Qwen2/Qwen3 with use_sliding_window, Qwen2-MoE) only
    its "sliding_attention" layers; without (Mistral, Mixtral, Phi-3, Qwen3-MoE) every
    layer when `sliding_window` is set. HF's configs already turn `sliding_window` to
    None or 0 where `use_sliding_window` is false."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer_idx] != "sliding_attention":
        return None
    return int(window)
