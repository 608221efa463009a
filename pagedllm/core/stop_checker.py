"""Token-level stop conditions, checked after each sampled token. Stop strings are
the detokenizer's business (they need text)."""

from __future__ import annotations

import logging

from pagedllm.core.request import Request, RequestStatus
from pagedllm.structured_output.backend_types import StructuredOutputGrammar

logger = logging.getLogger(__name__)


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
    if reached_length_limit(request, request.num_output_tokens, request.num_tokens, max_model_len):
        request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return True
    return False


def check_grammar_stops(batch: list[tuple[Request, int]]) -> list[Request]:
    """Structured outputs: advance each request's grammar by its new token (the
    grammars of one backend in one call, which may spread them over threads); return
    the requests (status set to stopped) whose grammar has terminated, or could not
    take the token (logged: the bitmask allowed only tokens it can take, so a
    backend bug)."""
    by_class: dict[
        type[StructuredOutputGrammar], list[tuple[Request, StructuredOutputGrammar, int]]
    ]
    by_class = {}
    for request, token in batch:
        sor = request.structured_output_request
        grammar = sor.grammar if sor is not None else None
        if grammar is not None:
            by_class.setdefault(type(grammar), []).append((request, grammar, token))
    stopped: list[Request] = []
    for cls, items in by_class.items():
        accepted = cls.accept_tokens([(g, t) for _, g, t in items])
        for (request, grammar, token), ok in zip(items, accepted):
            if not ok:
                logger.error("Request %s: its grammar rejected token %d", request.request_id, token)
            if not ok or grammar.is_terminated():
                request.status = RequestStatus.FINISHED_STOPPED
                stopped.append(request)
    return stopped


def reached_length_limit(
    request: Request, num_output_tokens: int, num_tokens: int, max_model_len: int
) -> bool:
    """The length stop: max_tokens outputs (resolved at admission) or a full context.
    The scheduler asks it too, counting tokens still in flight."""
    return num_output_tokens >= request.max_tokens or num_tokens >= max_model_len
