"""Quantization methods by vLLM's names (`quantization=`), and the config that the
linear layers read while a model is being built.

The loader builds the model inside `set_current_quant_config(config)`; every
`LinearBase` made meanwhile asks the config for its method. Layers that must stay in
float (modules_to_not_convert, FP8 ignored_layers) are switched back by
`resolve_layer_methods` once the module names are known. Embeddings and the LM head
are not `LinearBase` layers, so they are never quantized.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from pagedllm.layers.quantization.base_config import LinearMethodBase, QuantizationConfig

# name -> "module:class". None: handled by its loader.
_REGISTRY: dict[str, str | None] = {
    "awq": "pagedllm.layers.quantization.awq:AWQConfig",
    "fp8": "pagedllm.layers.quantization.fp8:Fp8Config",
    "gguf": "pagedllm.layers.quantization.gguf:GGUFConfig",
    "gptq": "pagedllm.layers.quantization.gptq:GPTQConfig",
    "squeezellm": "pagedllm.layers.quantization.squeezellm:SqueezeLLMConfig",
}
QUANTIZATION_METHODS: list[str] = list(_REGISTRY)

_current: QuantizationConfig | None = None


def register_quantization_config(name: str, target: str | None) -> None:
    """Add a method ("module:class" of its QuantizationConfig, or None)."""
    _REGISTRY[name] = target
    if name not in QUANTIZATION_METHODS:
        QUANTIZATION_METHODS.append(name)


def get_quantization_config(name: str) -> type[QuantizationConfig] | None:
    """The config class of method `name` (None for methods handled by a loader)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"quantization must be one of {[None, *QUANTIZATION_METHODS]}, got {name!r}"
        )
    target = _REGISTRY[name]
    if target is None:
        return None
    module_name, cls_name = target.split(":")
    cls: type[QuantizationConfig] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def make_quant_config(name: str | None, hf_config: Any) -> QuantizationConfig | None:
    """The parsed config of method `name` for a model whose HF config is `hf_config`
    (its `quantization_config`, or {} for online quantization)."""
    if name is None:
        return None
    cls = get_quantization_config(name)
    if cls is None:
        return None
    raw = getattr(hf_config, "quantization_config", None) or {}
    return cls.from_config(dict(raw) if not isinstance(raw, dict) else raw)


@contextlib.contextmanager
def set_current_quant_config(config: QuantizationConfig | None) -> Iterator[None]:
    global _current
    old, _current = _current, config
    try:
        yield
    finally:
        _current = old


def get_current_quant_config() -> QuantizationConfig | None:
    return _current


__all__ = [
    "QUANTIZATION_METHODS",
    "LinearMethodBase",
    "QuantizationConfig",
    "get_current_quant_config",
    "get_quantization_config",
    "make_quant_config",
    "register_quantization_config",
    "set_current_quant_config",
]
