"""User prompts -> validated token ids, and per-request SamplingParams resolved
against the model (EOS tokens, max_tokens within max_model_len).

The one admission check of a request: everything that could fail later for one
request (in the scheduler, a step, the sampler) fails here, alone, as an
`InvalidRequestError` naming the field (the checks themselves: `validation.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagedllm.config import ModelConfig, StructuredOutputsConfig
from pagedllm.engine import validation
from pagedllm.exceptions import InvalidRequestError
from pagedllm.sampling_params import SamplingParams

PromptType = Any  # str | {"prompt": str} | {"prompt_token_ids": list[int]} | list[int]


@dataclass
class ProcessedPrompt:
    prompt: str | None
    prompt_token_ids: list[int]


def process_prompt(
    prompt: PromptType,
    tokenizer: Any,
    model_config: ModelConfig,
    add_special_tokens: bool = True,
    pooling: bool = False,
    truncate_prompt_tokens: int | None = None,
) -> ProcessedPrompt:
    """Token ids of a prompt that fits the context (its last `truncate_prompt_tokens`
    when set, as in vLLM). The length is checked before the ids are looked at, so a
    huge prompt is refused at once."""
    text, token_ids = _split_prompt(prompt)
    if token_ids is None:
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer; pass prompt_token_ids instead")
        token_ids = encode_text(tokenizer, text or "", "prompt", add_special_tokens)
    keep = validation.truncation_size(truncate_prompt_tokens, model_config.max_model_len)
    if keep is not None and len(token_ids) > keep:
        token_ids = token_ids[-keep:]
    validation.check_prompt_length(len(token_ids), model_config.max_model_len, pooling)
    if not validation.all_plain_ints(token_ids):
        token_ids = [int(t) for t in token_ids]  # numpy integers -> int
    validation.check_token_ids(token_ids, model_config.vocab_size, "prompt_token_ids")
    return ProcessedPrompt(prompt=text, prompt_token_ids=token_ids)


def encode_text(tokenizer: Any, text: str, field: str, add_special_tokens: bool) -> list[int]:
    """tokenizer.encode, with text that is not valid Unicode (a lone surrogate such as
    "\\ud800", which JSON can carry) rejected as a ValueError naming the field."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{field} is not valid Unicode: {exc.object[exc.start : exc.end]!r} at index "
            f"{exc.start} is a lone surrogate",
            field,
        ) from None
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def _split_prompt(prompt: PromptType) -> tuple[str | None, list[Any] | None]:
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        if "prompt" in prompt and isinstance(prompt["prompt"], str):
            return prompt["prompt"], None
        raise ValueError("prompt dict must have 'prompt' (str) or 'prompt_token_ids' (list of int)")
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return None, list(prompt)
    raise ValueError(
        f"prompt must be a string, a token id list or a dict, got {type(prompt).__name__}"
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
    strict_max_tokens: bool = False,
) -> SamplingParams:
    """A private copy, validated again (fields may have changed since construction),
    with EOS and bad words resolved and `max_tokens` set to the number of tokens the
    request may generate (the one value the core's stop checks read).

    This is the admission check: everything that could fail inside an engine step
    for one request (its seed, token ids, logprob counts) fails here, alone.
    `strict_max_tokens`: see `validation.resolve_max_tokens`."""
    sp = params.clone()
    sp.verify()
    verify_cost(sp, model_config, max_num_seqs)
    validation.verify_token_ids(sp, model_config.vocab_size)
    if sp.bad_words:
        sp.bad_words_token_ids = tokenize_bad_words(sp.bad_words, tokenizer)
    if sp.structured_outputs is not None:
        from pagedllm.structured_output import validate_structured_outputs

        validate_structured_outputs(
            sp.structured_outputs, structured_outputs_config or StructuredOutputsConfig()
        )
    sp.update_from_generation_config(model_config.generation_config, eos_token_id)
    sp.max_tokens = validation.resolve_max_tokens(
        sp.max_tokens, num_prompt_tokens, model_config.max_model_len, strict_max_tokens
    )
    return sp


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
                raise InvalidRequestError(
                    f"{name} must be at most max_num_seqs={max_num_seqs}, got {value}", name
                )
    limit = model_config.max_logprobs
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(sp, name)
        if value is None or limit == -1:
            continue
        if value == -1 and limit < model_config.vocab_size:
            raise InvalidRequestError(
                f"{name}=-1 (the whole vocabulary) needs max_logprobs=-1 or at least the "
                f"vocabulary size {model_config.vocab_size}; max_logprobs is {limit}",
                name,
            )
        if value > limit:
            raise InvalidRequestError(
                f"{name} must be at most max_logprobs={limit}, got {value}", name
            )
