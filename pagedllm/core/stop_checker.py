"""Token-level stop conditions, checked after each sampled token. Stop strings are
the detokenizer's business (they need text)."""

from __future__ import annotations

from pagedllm.core.request import Request, RequestStatus


def check_stop(request: Request, max_model_len: int) -> bool:
    """Set the finished status of a request whose last token ends it."""
    sp = request.sampling_params
    assert sp is not None
    last = request.output_token_ids[-1]
    if request.num_output_tokens >= sp.min_tokens and last in sp.all_stop_token_ids:
        request.status = RequestStatus.FINISHED_STOPPED
        # vLLM reports the id for stop_token_ids and None for the model's EOS.
        if last in (sp.stop_token_ids or []):
            request.stop_reason = last
        return True
    if request.num_output_tokens >= request.max_tokens or request.num_tokens >= max_model_len:
        request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return True
    return False
