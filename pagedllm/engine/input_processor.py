"""User prompts -> validated token ids, and per-request SamplingParams resolved
against the model (EOS tokens, max_tokens within max_model_len)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagedllm.config import ModelConfig, StructuredOutputsConfig
from pagedllm.layers.sampling_metadata import verify_token_ids
from pagedllm.sampling_params import SamplingParams

PromptType = Any  # str | {"prompt": str} | {"prompt_token_ids": list[int]} | list[int]


@dataclass
class ProcessedPrompt:
    prompt: str | None
    prompt_token_ids: list[int]


def process_prompt(
    prompt: PromptType, tokenizer: Any, model_config: ModelConfig, add_special_tokens: bool = True
) -> ProcessedPrompt:
    text, token_ids = _split_prompt(prompt)
    if token_ids is None:
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer; pass prompt_token_ids instead")
        token_ids = encode_text(tokenizer, text or "", "prompt", add_special_tokens)
    _validate_token_ids(token_ids, model_config)
    return ProcessedPrompt(prompt=text, prompt_token_ids=token_ids)


def encode_text(tokenizer: Any, text: str, field: str, add_special_tokens: bool) -> list[int]:
    """tokenizer.encode, with text that is not valid Unicode (a lone surrogate such as
    "\\ud800", which JSON can carry) rejected as a ValueError naming the field."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field} is not valid Unicode: {exc.object[exc.start : exc.end]!r} at index "
            f"{exc.start} is a lone surrogate"
        ) from None
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def _split_prompt(prompt: PromptType) -> tuple[str | None, list[int] | None]:
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
        if "prompt" in prompt and isinstance(prompt["prompt"], str):
            return prompt["prompt"], None
        raise ValueError("prompt dict must have 'prompt' (str) or 'prompt_token_ids' (list of int)")
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return None, list(prompt)
    raise ValueError(
        f"prompt must be a string, a token id list or a dict, got {type(prompt).__name__}"
    )


def _validate_token_ids(token_ids: list[int], model_config: ModelConfig) -> None:
    if not token_ids:
        raise ValueError("The prompt cannot be empty")
    vocab = model_config.vocab_size
    bad = [t for t in token_ids if t < 0 or t >= vocab]
    if bad:
        raise ValueError(
            f"prompt_token_ids contains token id {bad[0]} outside the vocabulary [0, {vocab})"
        )


def check_prompt_length(num_prompt_tokens: int, model_config: ModelConfig, pooling: bool) -> None:
    limit = model_config.max_model_len
    too_long = num_prompt_tokens > limit if pooling else num_prompt_tokens >= limit
    if too_long:
        raise ValueError(
            f"The prompt (length {num_prompt_tokens}) is longer than the maximum model length "
            f"of {limit}" + ("" if pooling else " (at least one token must be left to generate)")
        )


def tokenize_bad_words(bad_words: list[str], tokenizer: Any) -> list[list[int]]:
    """vLLM's rule: each word as written and with a leading space (how it appears
    after another word), without special tokens."""
    if tokenizer is None:
        raise ValueError("bad_words needs a tokenizer (the engine was started without one)")
    sequences: list[list[int]] = []
    for word in bad_words:
        variants = [word] if word.startswith(" ") else [word, " " + word]
        for text in variants:
            ids = encode_text(tokenizer, text, "bad_words", add_special_tokens=False)
            if ids and ids not in sequences:
                sequences.append(ids)
    return sequences


def resolve_sampling_params(
    params: SamplingParams,
    num_prompt_tokens: int,
    model_config: ModelConfig,
    eos_token_id: int | None,
    tokenizer: Any = None,
    max_num_seqs: int | None = None,
    structured_outputs_config: StructuredOutputsConfig | None = None,
) -> tuple[SamplingParams, int]:
    """A private copy, validated again (fields may have changed since construction),
    with EOS and bad words resolved, and the effective max_tokens.

    This is the admission check: everything that could fail inside an engine step
    for one request (its seed, token ids, logprob counts) fails here, alone."""
    sp = params.clone()
    sp.verify()
    verify_cost(sp, model_config, max_num_seqs)
    verify_token_ids(sp, model_config.vocab_size)
    vocab = model_config.vocab_size
    if any(t >= vocab for t in sp.stop_token_ids or []):
        raise ValueError(f"stop_token_ids contains a token id outside the vocabulary [0, {vocab})")
    if sp.bad_words:
        sp.bad_words_token_ids = tokenize_bad_words(sp.bad_words, tokenizer)
    if sp.structured_outputs is not None:
        from pagedllm.structured_output import validate_structured_outputs

        validate_structured_outputs(
            sp.structured_outputs, structured_outputs_config or StructuredOutputsConfig()
        )
    sp.update_from_generation_config(model_config.generation_config, eos_token_id)
    room = model_config.max_model_len - num_prompt_tokens
    max_tokens = room if sp.max_tokens is None else min(sp.max_tokens, room)
    return sp, max_tokens


def verify_cost(sp: SamplingParams, model_config: ModelConfig, max_num_seqs: int | None) -> None:
    """The limits on what one request may cost.

    n (and best_of): at most max_num_seqs, the sequences one step can run; more could
    never run together and would hold the engine for every other request (vLLM has no
    limit). logprobs / prompt_logprobs: at most max_logprobs (vLLM's --max-logprobs,
    default 20); -1 (the whole vocabulary) only when max_logprobs is -1 or covers the
    vocabulary, as in vLLM."""
    if max_num_seqs is not None:
        for name in ("n", "best_of"):
            value = getattr(sp, name)
            if value is not None and value > max_num_seqs:
                raise ValueError(f"{name} must be at most max_num_seqs={max_num_seqs}, got {value}")
    limit = model_config.max_logprobs
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(sp, name)
        if value is None or limit == -1:
            continue
        if value == -1 and limit < model_config.vocab_size:
            raise ValueError(
                f"{name}=-1 (the whole vocabulary) needs max_logprobs=-1 or at least the "
                f"vocabulary size {model_config.vocab_size}; max_logprobs is {limit}"
            )
        if value > limit:
            raise ValueError(f"{name} must be at most max_logprobs={limit}, got {value}")
