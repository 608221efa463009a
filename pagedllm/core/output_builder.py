"""What a step tells the front end: per updated request, the tokens (and logprobs)
not sent yet, once, as `EngineCoreOutput`s (`EngineCore.make_outputs`). A request that
does not stream is sent in one piece when it finishes; a pooling request only then."""

from __future__ import annotations

from pagedllm.core.messages import EngineCoreOutput
from pagedllm.core.request import Request


def new_outputs(updated: list[Request]) -> list[EngineCoreOutput]:
    """Each updated request's new output, each request once however often it appears."""
    outputs: list[EngineCoreOutput] = []
    seen: set[str] = set()
    for request in updated:
        if request.request_id in seen:
            continue
        seen.add(request.request_id)
        output = _new_output(request)
        if output is not None:
            outputs.append(output)
    return outputs


def _new_output(request: Request) -> EngineCoreOutput | None:
    finished = request.is_finished
    if request.is_pooling:
        if not finished:
            return None
        return EngineCoreOutput(
            request.request_id, [], finish_status=int(request.status), pooled=request.pooled
        )
    if not finished and not request.stream_outputs:
        return None  # sent in one piece when it finishes
    start = request.num_sent_tokens
    new_tokens = request.output_token_ids[start:]
    lp_start = request.num_sent_prompt_logprobs
    new_prompt_lps = request.prompt_logprobs[lp_start:]
    if not new_tokens and not new_prompt_lps and not finished:
        return None
    output = EngineCoreOutput(
        request.request_id,
        new_tokens,
        new_logprobs=request.logprobs[start:] if request.logprobs else None,
        new_prompt_logprobs=new_prompt_lps or None,
        finish_status=int(request.status) if finished else 0,
        stop_reason=request.stop_reason,
    )
    if start == 0 and lp_start == 0:
        _stamp_first(output, request)
    request.num_sent_tokens = request.num_output_tokens
    request.num_sent_prompt_logprobs = len(request.prompt_logprobs)
    return output


def _stamp_first(output: EngineCoreOutput, request: Request) -> None:
    output.num_cached_tokens = max(0, request.num_cached_tokens)
    m = request.metrics
    if m is not None:
        output.first_scheduled_time = m.first_scheduled_time or 0.0
        output.first_token_time = m.first_token_time or 0.0
