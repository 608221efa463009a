"""The checks a request passes once, when it is admitted (`input_processor` and
`request_builder` call them): token ids within the vocabulary, the prompt within the
context, max_tokens, the pooling parameters. Nothing after admission checks again:
the scheduler, the sampler and the pooler rely on these.

Every failure is an `InvalidRequestError` (a ValueError) naming the request field
(`param`); the OpenAI server answers it with HTTP 400 and `param` in the error body.
The context-length messages are vLLM's server wording (clients match on them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pagedllm.exceptions import InvalidRequestError
from pagedllm.sampling_params import PoolingParams, SamplingParams, check_truncate_prompt_tokens


def check_token_ids(token_ids: Sequence[Any], vocab_size: int, param: str) -> None:
    """Every id an int in [0, vocab_size)."""
    if all_plain_ints(token_ids) and 0 <= min(token_ids) and max(token_ids) < vocab_size:
        return  # the usual case, checked at C speed (a 1,024-id prompt: ~30 us, not ~400)
    for t in token_ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise InvalidRequestError(
                f"{param} contains token id {t!r} outside the vocabulary [0, {vocab_size})",
                param,
            )


def all_plain_ints(values: Sequence[Any]) -> bool:
    """Every value an int (not a bool, a float or a numpy integer); False when empty."""
    return len(values) > 0 and set(map(type, values)) == {int}


def truncation_size(truncate_prompt_tokens: int | None, max_model_len: int) -> int | None:
    """How many of a prompt's last tokens to keep (vLLM's truncate_prompt_tokens):
    None keeps them all, -1 keeps max_model_len, k >= 1 keeps k."""
    check_truncate_prompt_tokens(truncate_prompt_tokens)
    return max_model_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens


def check_prompt_length(num_prompt_tokens: int, max_model_len: int, pooling: bool) -> None:
    """A prompt to generate from must leave room for one token; a pooling input may
    fill the context."""
    if num_prompt_tokens == 0:
        raise InvalidRequestError("The prompt cannot be empty", "prompt")
    if pooling and num_prompt_tokens > max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, an "
            f"input has {num_prompt_tokens} tokens.",
            "prompt",
        )
    if not pooling and num_prompt_tokens >= max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {num_prompt_tokens} input tokens. Please reduce the length of the "
            "input.",
            "prompt",
        )


def resolve_max_tokens(
    requested: int | None, num_prompt_tokens: int, max_model_len: int, strict: bool
) -> int:
    """The number of tokens the request may generate: absent max_tokens means the rest
    of the context. Past the context, `strict` (the OpenAI servers, vLLM's serving
    rule) is an error; otherwise (the offline LLM, as in vLLM) the context caps it.
    max_tokens < 1 was refused by SamplingParams.verify before."""
    room = max_model_len - num_prompt_tokens
    if requested is None:
        return room
    if strict and requested > room:
        raise InvalidRequestError(
            f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's "
            f"maximum context length is {max_model_len} tokens and your request has "
            f"{num_prompt_tokens} input tokens ({requested} > {max_model_len} - "
            f"{num_prompt_tokens}).",
            "max_tokens",
        )
    return min(requested, room)


def verify_token_ids(params: SamplingParams, vocab_size: int) -> None:
    """The token ids the sampler indexes with (logit_bias, allowed_token_ids) and the
    stop ids: all inside the vocabulary, so that no step can fail on them."""
    for token_id in (params.logit_bias or {}).keys():
        if not 0 <= token_id < vocab_size:
            raise InvalidRequestError(
                f"logit_bias has token id {token_id} outside the vocabulary [0, {vocab_size})",
                "logit_bias",
            )
    if params.allowed_token_ids is not None:
        if not params.allowed_token_ids:
            raise InvalidRequestError("allowed_token_ids must not be empty", "allowed_token_ids")
        bad = [t for t in params.allowed_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequestError(
                f"allowed_token_ids has token ids outside the vocabulary [0, {vocab_size}): "
                f"{bad[:5]}",
                "allowed_token_ids",
            )
    if any(t >= vocab_size for t in params.stop_token_ids or []):
        raise InvalidRequestError(
            f"stop_token_ids contains a token id outside the vocabulary [0, {vocab_size})",
            "stop_token_ids",
        )


def verify_pooling_params(params: PoolingParams, hf_config: Any, served_model_name: str) -> None:
    """What the model cannot do for an embedding request, with vLLM's messages: as in
    vLLM, `dimensions` (Matryoshka truncation) is refused unless the model says it was
    trained for it (`is_matryoshka` or `matryoshka_dimensions` in its config)."""
    if params.dimensions is None:
        return
    mds = getattr(hf_config, "matryoshka_dimensions", None)
    if not (getattr(hf_config, "is_matryoshka", False) or mds):
        raise InvalidRequestError(
            f'Model "{served_model_name}" does not support matryoshka representation, '
            f"changing output dimensions will lead to poor results.",
            "dimensions",
        )
    if mds and params.dimensions not in mds:
        raise InvalidRequestError(
            f'Model "{served_model_name}" only supports {list(mds)} matryoshka dimensions, '
            f"use other output dimensions will lead to poor results.",
            "dimensions",
        )
    hidden_size = int(hf_config.hidden_size)
    if params.dimensions > hidden_size:
        raise InvalidRequestError(
            f"dimensions must be at most the model's hidden size ({hidden_size}), "
            f"got {params.dimensions}",
            "dimensions",
        )
