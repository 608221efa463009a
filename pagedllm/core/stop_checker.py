"""Token-level stop conditions, checked after each sampled token. Stop strings are
the detokenizer's business (they need text)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

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


def accept_grammar_tokens(batch: Sequence[tuple[StructuredOutputGrammar, int]]) -> list[bool]:
    """Advance each grammar by its token, in order; the grammars of one backend in one
    call (which may spread them over threads without the GIL). Whether each took it."""
    by_class: dict[type[StructuredOutputGrammar], list[int]] = {}
    for i, (grammar, _) in enumerate(batch):
        by_class.setdefault(type(grammar), []).append(i)
    accepted = [False] * len(batch)
    for cls, rows in by_class.items():
        for row, ok in zip(rows, cls.accept_tokens([batch[i] for i in rows])):
            accepted[row] = ok
    return accepted


def check_grammar_stops(
    batch: list[tuple[Request, int]], advanced: Mapping[str, bool] | None = None
) -> list[Request]:
    """Structured outputs: advance each request's grammar by its new token; return the
    requests (status set to stopped) whose grammar has terminated, or could not take
    the token (logged: the bitmask allowed only tokens it can take, so a backend bug).
    `advanced`: request id -> whether its grammar took this token, for the requests
    whose grammar the core's grammar thread already advanced (not advanced again)."""
    advanced = advanced or {}
    items: list[tuple[Request, StructuredOutputGrammar, int]] = []
    for request, token in batch:
        sor = request.structured_output_request
        if sor is not None and sor.grammar is not None:
            items.append((request, sor.grammar, token))
    todo = [(g, t) for r, g, t in items if r.request_id not in advanced]
    fresh = iter(accept_grammar_tokens(todo))
    stopped: list[Request] = []
    for request, grammar, token in items:
        ok = advanced[request.request_id] if request.request_id in advanced else next(fresh)
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
