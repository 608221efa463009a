"""The core's outputs -> RequestOutputs, in the front end: detokenize new tokens, apply
stop strings (a stopped child is reported to the caller, which tells the core), gather
the n samples of a user request, and emit cumulative / delta / final outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.core.messages import EngineCoreOutput, EngineCoreRequest
from pagedllm.core.request import FINISH_REASONS, RequestStatus
from pagedllm.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagedllm.engine.request_builder import BuiltRequest
from pagedllm.outputs import (
    CompletionOutput,
    EmbeddingOutput,
    Logprob,
    LogprobsDict,
    PoolingRequestOutput,
    RequestMetrics,
    RequestOutput,
)
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.scheduler_output import SampledLogprobs


@dataclass
class ChildState:
    """One of the n samples: how far its text and tokens have been emitted."""

    detokenizer: IncrementalDetokenizer | None
    num_tokens_seen: int = 0
    num_tokens_sent: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[LogprobsDict] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    updated: bool = False


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams | None
    children: dict[str, ChildState]
    child_order: list[str]
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    prompt_logprobs: list[LogprobsDict | None] | None = None

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.children.values())


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}
        self.child_to_parent: dict[str, str] = {}

    def add_request(self, parent_id: str, built: BuiltRequest) -> None:
        params = built.params if isinstance(built.params, SamplingParams) else None
        states = {
            c.request_id: ChildState(self._make_detokenizer(built, c)) for c in built.children
        }
        self.states[parent_id] = RequestState(
            request_id=parent_id,
            prompt=built.prompt,
            prompt_token_ids=built.prompt_token_ids,
            params=params,
            children=states,
            child_order=[c.request_id for c in built.children],
            metrics=RequestMetrics(arrival_time=built.children[0].arrival_time),
        )
        for c in built.children:
            self.child_to_parent[c.request_id] = parent_id

    def _make_detokenizer(
        self, built: BuiltRequest, child: EngineCoreRequest
    ) -> IncrementalDetokenizer | None:
        sp = child.sampling_params
        if sp is None or not sp.detokenize or self.tokenizer is None:
            return None
        return IncrementalDetokenizer.from_sampling_params(
            self.tokenizer, built.prompt_token_ids, sp
        )

    def has_request(self, parent_id: str) -> bool:
        return parent_id in self.states

    def parent_of(self, child_id: str) -> str | None:
        return self.child_to_parent.get(child_id)

    def process(
        self, core_outputs: list[EngineCoreOutput]
    ) -> tuple[list[RequestOutput | PoolingRequestOutput], list[str]]:
        """Returns the outputs to hand out and the child ids stopped by a stop string
        (the caller tells the core to stop those)."""
        now = time.time()
        touched: dict[str, RequestState] = {}
        stopped: list[str] = []
        pooled: list[PoolingRequestOutput] = []
        for out in core_outputs:
            parent_id = self.child_to_parent.get(out.request_id)
            if parent_id is None:
                continue  # aborted, or stopped here while the core ran on
            state = self.states[parent_id]
            if out.pooled is not None or state.params is None:
                pooled.append(self._pooling_output(state, out, now))
                continue
            if self._update_child(state, out, now):
                stopped.append(out.request_id)
            touched[parent_id] = state
        outputs: list[RequestOutput | PoolingRequestOutput] = list(pooled)
        for state in touched.values():
            result = self._make_output(state, now)
            if result is not None:
                outputs.append(result)
            if state.finished:
                self._forget(state)
        return outputs, stopped

    def _update_child(self, state: RequestState, out: EngineCoreOutput, now: float) -> bool:
        child = state.children[out.request_id]
        if child.finish_reason is not None:
            return False  # stopped here by a stop string; the core's late tokens are dropped
        sp = state.params
        assert sp is not None
        new_tokens = out.new_token_ids
        child.num_tokens_seen += len(new_tokens)
        child.token_ids.extend(new_tokens)
        child.updated = True
        self._update_metrics(state, out, len(new_tokens), now)
        if out.new_prompt_logprobs and sp.prompt_logprobs is not None:
            if state.prompt_logprobs is None:
                state.prompt_logprobs = [None]
            k = sp.prompt_logprobs
            state.prompt_logprobs += [self._logprob_dict(lp, k) for lp in out.new_prompt_logprobs]
        if out.num_cached_tokens:
            state.num_cached_tokens = out.num_cached_tokens
        for lp in out.new_logprobs or ():
            child.cumulative_logprob += lp.logprobs[0]
            if sp.logprobs is not None:
                child.logprobs.append(self._logprob_dict(lp, sp.logprobs))
        stop_string = self._detokenize(child, sp, out)
        if stop_string is not None and not out.finished:
            child.finish_reason, child.stop_reason = "stop", stop_string
            return True
        if out.finished:
            child.finish_reason = FINISH_REASONS[RequestStatus(out.finish_status)]
            if child.stop_reason is None and out.finish_status != RequestStatus.FINISHED_ERROR:
                child.stop_reason = out.stop_reason
        return False

    def _detokenize(
        self, child: ChildState, sp: SamplingParams, out: EngineCoreOutput
    ) -> str | None:
        if child.detokenizer is None or not out.new_token_ids:
            return None
        stopped_by_token = (
            out.finish_status == RequestStatus.FINISHED_STOPPED
            and out.new_token_ids[-1] in sp.all_stop_token_ids
        )
        return child.detokenizer.update(out.new_token_ids, stop_terminated=stopped_by_token)

    def _update_metrics(
        self, state: RequestState, out: EngineCoreOutput, num_new: int, now: float
    ) -> None:
        m = state.metrics
        if out.first_scheduled_time and m.first_scheduled_time is None:
            m.first_scheduled_time = out.first_scheduled_time
        if num_new:
            if m.first_token_time is None:
                # The core stamps the first token (its outputs may come in one piece at the end).
                m.first_token_time = out.first_token_time or now
            m.last_token_time = now
            m.num_generation_tokens += num_new

    def _logprob_dict(self, lp: SampledLogprobs, k: int) -> LogprobsDict:
        result: LogprobsDict = {}
        sampled = lp.token_ids[0]
        result[sampled] = Logprob(lp.logprobs[0], lp.sampled_rank, self._decode(sampled))
        end = len(lp.token_ids) if k < 0 else k + 1  # k == -1: the whole vocabulary
        for rank, (tid, value) in enumerate(zip(lp.token_ids[1:end], lp.logprobs[1:end]), 1):
            if tid not in result:
                result[tid] = Logprob(value, rank, self._decode(tid))
        return result

    def _decode(self, token_id: int) -> str | None:
        return decode_token(self.tokenizer, token_id) if self.tokenizer is not None else None

    def _make_output(self, state: RequestState, now: float) -> RequestOutput | None:
        params = state.params
        assert params is not None
        kind = params.output_kind
        finished = state.finished
        if finished:
            state.metrics.finished_time = now
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        delta = kind == RequestOutputKind.DELTA
        ids = state.child_order
        children = [state.children[i] for i in ids]
        completions = [
            self._completion(idx, c, params, delta=delta)
            for idx, c in enumerate(children)
            if not delta or c.updated
        ]
        for c in children:
            c.updated = False
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=state.prompt_logprobs,
            outputs=completions,
            finished=finished,
            metrics=state.metrics,
            num_cached_tokens=state.num_cached_tokens,
        )

    def _completion(
        self, index: int, c: ChildState, params: SamplingParams, delta: bool
    ) -> CompletionOutput:
        text = ""
        if c.detokenizer is not None:
            text = c.detokenizer.get_next_output_text(c.finish_reason is not None, delta)
        start = c.num_tokens_sent if delta else 0
        c.num_tokens_sent = len(c.token_ids)
        wants_logprobs = params.logprobs is not None
        return CompletionOutput(
            index=index,
            text=text,
            token_ids=c.token_ids[start:],
            cumulative_logprob=c.cumulative_logprob if wants_logprobs else None,
            logprobs=c.logprobs[start:] if wants_logprobs else None,
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
        )

    def _pooling_output(
        self, state: RequestState, out: EngineCoreOutput, now: float
    ) -> PoolingRequestOutput:
        state.metrics.finished_time = now
        if out.first_scheduled_time:
            state.metrics.first_scheduled_time = out.first_scheduled_time
        self._forget(state)
        return PoolingRequestOutput(
            request_id=state.request_id,
            prompt_token_ids=state.prompt_token_ids,
            outputs=EmbeddingOutput(embedding=out.pooled or []),
            finished=True,
            prompt=state.prompt,
            metrics=state.metrics,
        )

    def abort(self, parent_id: str) -> list[str]:
        """Forget a request; its child ids (for the core to abort), [] if unknown."""
        state = self.states.get(parent_id)
        if state is None:
            return []
        self._forget(state)
        return list(state.child_order)

    def _forget(self, state: RequestState) -> None:
        self.states.pop(state.request_id, None)
        for child_id in state.child_order:
            self.child_to_parent.pop(child_id, None)
