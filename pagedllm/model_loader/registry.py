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
    "GlmForCausalLM": ("pagedllm.models.glm", "GlmForCausalLM"),
    "Glm4ForCausalLM": ("pagedllm.models.glm", "Glm4ForCausalLM"),
    "ChatGLMModel": ("pagedllm.models.chatglm", "ChatGLMForCausalLM"),
    "ChatGLMForConditionalGeneration": ("pagedllm.models.chatglm", "ChatGLMForCausalLM"),
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
    "glm": "GlmForCausalLM",
    "glm4": "Glm4ForCausalLM",
    "chatglm": "ChatGLMModel",
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
    """The native architecture of `model_type`, else HF transformers' causal LM of it
    (which the Transformers fallback can run)."""
    arch = _MODEL_TYPE_TO_ARCH.get(model_type or "")
    if arch is not None or not model_type:
        return arch
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return names if isinstance(names, str) else None


def get_model_class(arch: str) -> type[nn.Module]:
    entry = _TEXT_GENERATION_MODELS.get(arch) or _POOLING_MODELS.get(arch)
    if entry is None:
        raise ValueError(
            f"model architecture {arch!r} is not supported; supported architectures: "
            f"{', '.join(supported_architectures())} (others: the Transformers fallback, "
            f"model_impl='transformers')"
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


_TRANSFORMERS_CLASS = ("pagedllm.models.transformers", "TransformersForCausalLM")


def transformers_causal_lm_class(arch: str, hf_config: object) -> str | None:
    """Why `arch` cannot run through the Transformers fallback (None: it can): it must
    be the causal-LM class HF transformers maps the config's model_type to, decoder-only,
    with support for custom attention functions."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(hf_config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model"
    model_type = getattr(hf_config, "model_type", "")
    mapped = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    names = [mapped] if isinstance(mapped, str) else list(mapped or [])
    if arch not in names:
        return (
            f"{arch!r} is not a decoder-only causal LM of HF transformers "
            f"{transformers.__version__}"
        )
    cls = getattr(transformers, arch, None)
    if cls is None or not getattr(cls, "_supports_attention_backend", False):
        return f"HF transformers' {arch} does not support custom attention functions"
    return None


def resolve_model_impl(arch: str, model_impl: str, hf_config: object) -> str:
    """The implementation that runs `arch`: "pagedllm" (native) or "transformers".
    `model_impl`: "auto" (native when there is one, else the fallback), "pagedllm"
    (alias "vllm") or "transformers"."""
    native = arch in _TEXT_GENERATION_MODELS or arch in _POOLING_MODELS
    if not arch or (native and model_impl != "transformers"):
        return "pagedllm"
    if model_impl in ("pagedllm", "vllm"):
        raise ValueError(
            f"model architecture {arch!r} has no native pagedllm implementation "
            f"(supported architectures: {', '.join(supported_architectures())}); "
            f"use model_impl='transformers' or 'auto' for the Transformers fallback"
        )
    reason = transformers_causal_lm_class(arch, hf_config)
    if reason is not None:
        raise ValueError(
            f"model architecture {arch!r} is not supported; supported architectures: "
            f"{', '.join(supported_architectures())}; the Transformers fallback "
            f"(model_impl='transformers') cannot run it either: {reason}"
        )
    return "transformers"


def get_model_class_for(arch: str, model_impl: str) -> type[nn.Module]:
    """The class of a resolved implementation (see resolve_model_impl)."""
    if model_impl != "transformers":
        return get_model_class(arch)
    module_name, class_name = _TRANSFORMERS_CLASS
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]
