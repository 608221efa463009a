"""Engine logprobs (one {token_id: Logprob} dict per position) -> the OpenAI formats:
the legacy completions format and the chat format. `as_ids` (vLLM's
return_tokens_as_token_ids) writes each token as "token_id:{id}", which every
token can be, even one that is not valid UTF-8 on its own."""

from __future__ import annotations

from typing import Any

from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionLogProb,
    ChatCompletionLogProbs,
    ChatCompletionLogProbsContent,
    CompletionLogProbs,
    PromptLogprob,
    PromptLogprobs,
)
from pagedllm.outputs import Logprob

_MIN_LOGPROB = -9999.0  # OpenAI's floor; also keeps -inf out of the JSON


def _ranked(step: dict[int, Logprob], num: int) -> list[tuple[int, Logprob]]:
    """The `num` most likely entries of one position, best first."""
    items = sorted(
        step.items(),
        key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30, -kv[1].logprob),
    )
    return items[:num]


def _token_str(tokenizer: Any, token_id: int, logprob: Logprob | None, as_ids: bool = False) -> str:
    if as_ids:
        return f"token_id:{token_id}"
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return str(tokenizer.decode([token_id]))


def _clamp(value: float) -> float:
    return max(value, _MIN_LOGPROB)


def completion_logprobs(
    token_ids: list[int],
    steps: list[dict[int, Logprob] | None],
    num_top: int,
    tokenizer: Any,
    text_offset: int = 0,
    as_ids: bool = False,
) -> CompletionLogProbs:
    """`steps[i]` is None where there is no logprob (the first prompt token)."""
    out = CompletionLogProbs()
    for i, token_id in enumerate(token_ids):
        step = steps[i] if i < len(steps) else None
        sampled = step.get(token_id) if step else None
        token = _token_str(tokenizer, token_id, sampled, as_ids)
        out.tokens.append(token)
        out.text_offset.append(text_offset)
        text_offset += len(token)
        if step is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(_clamp(sampled.logprob) if sampled else None)
        top = {
            _token_str(tokenizer, t, lp, as_ids): _clamp(lp.logprob)
            for t, lp in _ranked(step, num_top)
        }
        if sampled is not None:
            top.setdefault(token, _clamp(sampled.logprob))
        out.top_logprobs.append(top)
    return out


def _chat_entry(
    tokenizer: Any, token_id: int, logprob: Logprob | None, as_ids: bool
) -> ChatCompletionLogProb:
    token = _token_str(tokenizer, token_id, logprob, as_ids)
    return ChatCompletionLogProb(
        token=token,
        logprob=_clamp(logprob.logprob) if logprob else _MIN_LOGPROB,
        bytes=list(token.encode("utf-8", errors="replace")),
    )


def chat_logprobs(
    token_ids: list[int],
    steps: list[dict[int, Logprob]],
    num_top: int,
    tokenizer: Any,
    as_ids: bool = False,
) -> ChatCompletionLogProbs:
    content = []
    for token_id, step in zip(token_ids, steps):
        entry = _chat_entry(tokenizer, token_id, step.get(token_id), as_ids)
        top = [_chat_entry(tokenizer, t, lp, as_ids) for t, lp in _ranked(step, num_top)]
        content.append(ChatCompletionLogProbsContent(**entry.model_dump(), top_logprobs=top))
    return ChatCompletionLogProbs(content=content)


def prompt_logprobs_json(steps: list[dict[int, Logprob] | None] | None) -> PromptLogprobs | None:
    """RequestOutput.prompt_logprobs as vLLM's response field (-inf clamped to -9999)."""
    if steps is None:
        return None
    return [
        None
        if step is None
        else {
            token_id: PromptLogprob(
                logprob=_clamp(lp.logprob), rank=lp.rank, decoded_token=lp.decoded_token
            )
            for token_id, lp in step.items()
        }
        for step in steps
    ]
