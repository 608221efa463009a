"""Architecture name (HF config `architectures[0]`) -> model class, imported lazily."""

from __future__ import annotations

import importlib

from torch import nn

# architecture -> (module, class name); modules are imported only when used.
_TEXT_GENERATION_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("pagedllm.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("pagedllm.models.llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("pagedllm.models.llama", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("pagedllm.models.llama", "Qwen3ForCausalLM"),
    "OPTForCausalLM": ("pagedllm.models.opt", "OPTForCausalLM"),
    "GPT2LMHeadModel": ("pagedllm.models.gpt2", "GPT2LMHeadModel"),
    "Phi3ForCausalLM": ("pagedllm.models.phi3", "Phi3ForCausalLM"),
    "GemmaForCausalLM": ("pagedllm.models.gemma", "GemmaForCausalLM"),
    "Gemma2ForCausalLM": ("pagedllm.models.gemma", "Gemma2ForCausalLM"),
    "Gemma3ForCausalLM": ("pagedllm.models.gemma", "Gemma3ForCausalLM"),
    "MixtralForCausalLM": ("pagedllm.models.moe", "MixtralForCausalLM"),
    "Qwen2MoeForCausalLM": ("pagedllm.models.moe", "Qwen2MoeForCausalLM"),
    "Qwen3MoeForCausalLM": ("pagedllm.models.moe", "Qwen3MoeForCausalLM"),
}

_POOLING_MODELS: dict[str, tuple[str, str]] = {
    "BertModel": ("pagedllm.models.bert", "BertEmbeddingModel"),
}

# HF model_type -> architecture, for configs that carry no `architectures` (GGUF).
_MODEL_TYPE_TO_ARCH: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "opt": "OPTForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "phi3": "Phi3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "bert": "BertModel",
}


def supported_architectures() -> list[str]:
    return sorted({**_TEXT_GENERATION_MODELS, **_POOLING_MODELS})


def is_pooling_architecture(arch: str) -> bool:
    return arch in _POOLING_MODELS


def architecture_for_model_type(model_type: str | None) -> str | None:
    return _MODEL_TYPE_TO_ARCH.get(model_type or "")


def get_model_class(arch: str) -> type[nn.Module]:
    entry = _TEXT_GENERATION_MODELS.get(arch) or _POOLING_MODELS.get(arch)
    if entry is None:
        raise ValueError(
            f"model architecture {arch!r} is not supported; supported architectures: "
            f"{', '.join(supported_architectures())}"
        )
    module_name, class_name = entry
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(
            f"model architecture {arch!r} is registered but {module_name} is missing"
        ) from err
    return getattr(module, class_name)
