"""Load the tokenizer a ResolvedModel/ModelConfig names: an HF directory or a GGUF file."""

from __future__ import annotations

from typing import Any


def get_tokenizer(
    tokenizer_path: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
    tokenizer_mode: str = "auto",
) -> Any:
    """A transformers tokenizer. For a .gguf path it is the one stored in the file
    (with its chat template), built once per process and shared: do not mutate it."""
    if tokenizer_path.endswith(".gguf"):
        from pagedllm.model_loader.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(tokenizer_path)
    from transformers import AutoTokenizer

    from pagedllm.model_loader.resolve import raise_if_needs_remote_code

    try:
        return AutoTokenizer.from_pretrained(
            tokenizer_path,
            trust_remote_code=trust_remote_code,
            revision=revision,
            use_fast=tokenizer_mode != "slow",
        )
    except (OSError, ValueError, TypeError) as exc:
        raise_if_needs_remote_code(exc, tokenizer_path, trust_remote_code, "tokenizer")
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ValueError(f"{tokenizer_path}: cannot load a tokenizer: {reason}") from exc
