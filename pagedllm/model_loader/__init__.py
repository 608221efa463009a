"""Model loading: resolve a model string, pick the class, load HF/GGUF/dummy weights."""

from pagedllm.model_loader.loader import get_model
from pagedllm.model_loader.registry import get_model_class, is_pooling_architecture
from pagedllm.model_loader.resolve import ResolvedModel, resolve_model
from pagedllm.model_loader.tokenizer import get_tokenizer

__all__ = [
    "ResolvedModel",
    "get_model",
    "get_model_class",
    "get_tokenizer",
    "is_pooling_architecture",
    "resolve_model",
]
