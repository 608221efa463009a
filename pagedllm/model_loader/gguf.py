"""GGUF checkpoints through transformers' own GGUF support: the config, the tokenizer
(with the chat template stored in the file) and the weights, dequantized at load
time and renamed to HF names (llama.cpp's q/k row permutation undone)."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from transformers import PretrainedConfig

from pagedllm.model_loader.registry import architecture_for_model_type

logger = logging.getLogger(__name__)


def _split(gguf_path: str) -> tuple[str, str]:
    path = os.path.abspath(gguf_path)
    return os.path.dirname(path), os.path.basename(path)


@functools.lru_cache(maxsize=4)
def _cached_config(gguf_path: str) -> PretrainedConfig:
    from transformers import AutoConfig

    directory, name = _split(gguf_path)
    config = AutoConfig.from_pretrained(directory, gguf_file=name)
    if not getattr(config, "architectures", None):
        arch = architecture_for_model_type(getattr(config, "model_type", None))
        config.architectures = [arch] if arch else []
    return config


def load_gguf_config(gguf_path: str) -> PretrainedConfig:
    """The HF config stored in a GGUF file (`architectures` filled in from model_type).
    Parsed once per process; each call returns a copy."""
    return copy.deepcopy(_cached_config(os.path.realpath(gguf_path)))


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(gguf_path: str) -> Any:
    from transformers import AutoTokenizer

    directory, name = _split(gguf_path)
    return AutoTokenizer.from_pretrained(directory, gguf_file=name)


def load_gguf_tokenizer(gguf_path: str) -> Any:
    """The tokenizer (with its chat template) stored in a GGUF file. Built once per
    process and shared: callers must not mutate it."""
    return _cached_tokenizer(os.path.realpath(gguf_path))


def _hf_reference_model(config: PretrainedConfig) -> torch.nn.Module:
    """An HF model on the meta device: transformers maps GGUF names through it."""
    from transformers import AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:
            return AutoModel.from_config(config)


def iterate_gguf_weights(
    gguf_path: str, config: PretrainedConfig | None = None, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, dequantized CPU tensor) for every tensor of the GGUF file."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = config if config is not None else load_gguf_config(gguf_path)
    kwargs: dict[str, Any] = {"return_tensors": True, "model_to_load": _hf_reference_model(config)}
    if dtype is not None and "torch_dtype" in inspect.signature(load_gguf_checkpoint).parameters:
        kwargs["torch_dtype"] = dtype
    logger.info("dequantizing GGUF weights from %s", gguf_path)
    tensors: dict[str, torch.Tensor] = load_gguf_checkpoint(gguf_path, **kwargs)["tensors"]
    while tensors:
        name = next(iter(tensors))
        yield name, tensors.pop(name)  # drop each tensor once it has been copied
