"""Build the model class for a ModelConfig on a device and load its weights."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn

from pagedllm.config import ModelConfig
from pagedllm.layers.linear import resolve_quant_methods
from pagedllm.layers.quantization import (
    QuantizationConfig,
    make_quant_config,
    set_current_quant_config,
)
from pagedllm.model_loader.dummy import initialize_dummy_weights
from pagedllm.model_loader.registry import get_model_class_for

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def set_default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def iterate_weights(model_config: ModelConfig) -> Iterable[tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) of the checkpoint `model_config` names."""
    if model_config.load_format == "gguf":
        from pagedllm.model_loader.gguf import iterate_gguf_weights

        keep = model_config.quantization == "gguf"
        return iterate_gguf_weights(model_config.model, model_config.hf_config, keep)
    from pagedllm.model_loader.hf import iterate_hf_weights

    return iterate_hf_weights(model_config.model, model_config.load_format)


def build_model(model_config: ModelConfig, device: torch.device) -> nn.Module:
    """The model class with uninitialized parameters, made directly on `device`."""
    arch = model_config.architecture
    if not arch:
        raise ValueError(f"the config of {model_config.model} names no architecture")
    model_cls = get_model_class_for(arch, model_config.model_impl)
    quant_config = get_quant_config(model_config)
    with (
        set_default_dtype(model_config.dtype),
        torch.device(device),
        set_current_quant_config(quant_config),
    ):
        model = model_cls(model_config.hf_config)
        resolve_quant_methods(model, quant_config)
    return cast(nn.Module, model)


def get_quant_config(model_config: ModelConfig) -> QuantizationConfig | None:
    """The parsed quantization config of the model (None: float weights)."""
    quant_config = make_quant_config(model_config.quantization, model_config.hf_config)
    if quant_config is not None:
        supported = quant_config.get_supported_act_dtypes()
        if model_config.dtype not in supported:
            raise ValueError(
                f"dtype {model_config.dtype} is not supported by quantization="
                f"{model_config.quantization!r} (supported: {supported})"
            )
    return quant_config


def process_weights_after_loading(model: nn.Module) -> None:
    """Let every quantized layer repack its loaded weights once."""
    for module in model.modules():
        quant_method = getattr(module, "quant_method", None)
        if quant_method is not None:
            quant_method.process_weights_after_loading(module)


def _check_coverage(model: nn.Module, loaded: set[str], source: str) -> None:
    missing = sorted(name for name, _ in model.named_parameters() if name not in loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(
            f"the checkpoint at {source} does not cover {len(missing)} parameter(s) of "
            f"{type(model).__name__}: {shown}"
        )


def get_model(model_config: ModelConfig, device: torch.device | str) -> nn.Module:
    """The model of `model_config` on `device` in `model_config.dtype`, in eval mode."""
    device = torch.device(device)
    start = time.perf_counter()
    model = build_model(model_config, device)
    if model_config.load_format == "dummy":
        initialize_dummy_weights(model, model_config.seed)
    else:
        with torch.no_grad():
            loaded = cast(Any, model).load_weights(iterate_weights(model_config))
        _check_coverage(model, loaded, model_config.model)
    with torch.no_grad():
        process_weights_after_loading(model)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "loaded %s (%.1fM parameters, %s, %s) in %.1fs",
        model_config.architecture,
        num_params / 1e6,
        model_config.dtype,
        model_config.load_format,
        time.perf_counter() - start,
    )
    return model.eval()
