"""The scheduler: one token budget per step, running requests first.

The rule (there is no prefill phase and no decode phase): every request has
`num_computed_tokens` (in the KV cache) and `num_tokens` (prompt + output so far).
Each step hands out up to `max_num_batched_tokens` tokens, first to running requests
in arrival order, then to waiting ones (FCFS), so that each request catches up by
`num_tokens - num_computed_tokens`. A prompt longer than the remaining budget is cut
into chunks (chunked prefill); prefix-cache hits start a new request with
`num_computed_tokens > 0`; when the KV cache runs out, the newest running request
is preempted (its blocks freed, its num_computed_tokens reset to 0) and recomputed
later from the waiting queue's head, or, with a CPU tier, swapped out (its blocks
copied to CPU memory, its num_computed_tokens kept) and copied back on resume.
With scheduling_policy="priority" both orders are (priority, arrival) instead
(core/request_queue.py): the lowest-priority running request is preempted first.

Several batches in flight (pipeline parallelism, `set_max_batches_in_flight`): a
request with a step in flight is left out of the next batches (its next token is
known only when that step's output arrives); `max_num_seqs` bounds each batch, so
up to max_num_seqs x batches requests run and each batch has its own (as vLLM's
virtual engines had); a request finished with a step in flight keeps its blocks
until that step is over. (Freeing them at once would be safe too: every rank runs
the steps in launch order, so a later step that reuses a block writes after the
earlier one. Async scheduling with one batch relies on that.)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping

from pagedllm.config import SchedulerConfig
from pagedllm.core.cpu_tier import SWAP_MIN_TOKENS
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.request_queue import make_waiting_queue, priority_key
from pagedllm.core.stop_checker import check_grammar_stops, check_stop, reached_length_limit
from pagedllm.core.worker_delta import add_worker_delta
from pagedllm.outputs import SchedulerStats
from pagedllm.scheduler_output import (
    ModelRunnerOutput,
    ScheduledRequest,
    SchedulerOutput,
    uses_token_history,
)

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache_manager: KVCacheManager) -> None:
        self.config = config
        self.kv = kv_cache_manager
        self.requests: dict[str, Request] = {}
        self.waiting = make_waiting_queue(config.policy)
        self.by_priority = config.policy == "priority"
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()  # finished since the last step
        self.stats = SchedulerStats(num_gpu_blocks=kv_cache_manager.num_blocks)
        self.finished_now: list[Request] = []  # finished inside schedule() (cannot ever fit)
        self._history_req_ids: set[str] = set()  # requests whose sampling reads their outputs
        self._structured_req_ids: set[str] = set()  # requests sampling under a grammar
        # At most one step in flight per request (several batches in flight).
        self.wait_for_in_flight = False
        self.max_num_running = config.max_num_seqs  # requests running at once
        # Finished requests whose blocks wait for their steps in flight to complete.
        self._free_after_flight: dict[str, Request] = {}

    # ---- requests in and out -------------------------------------------
    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)
        sp = request.sampling_params
        if sp is not None and uses_token_history(sp):
            self._history_req_ids.add(request.request_id)
        if request.structured_output_request is not None:
            self._structured_req_ids.add(request.request_id)

    def has_token_history_requests(self) -> bool:
        """Whether an unfinished request's sampling reads its own tokens (penalties,
        min_tokens, bad words)."""
        return bool(self._history_req_ids)

    def has_structured_requests(self) -> bool:
        return bool(self._structured_req_ids)

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> list[Request]:
        """Abort (or stop on a stop string) requests wherever they are; free their blocks."""
        done = []
        for req_id in request_ids:
            request = self.requests.get(req_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            request.status = status
            self._free(request)
            done.append(request)
        return done

    def _free(self, request: Request) -> None:
        self._history_req_ids.discard(request.request_id)
        self._structured_req_ids.discard(request.request_id)
        if request.num_steps_in_flight and self.wait_for_in_flight:
            self._free_after_flight[request.request_id] = request
        else:
            self.kv.free(request)
        self.finished_req_ids.add(request.request_id)
        self.requests.pop(request.request_id, None)
        reason = request.finish_reason or "abort"
        self.stats.finished_reasons[reason] = self.stats.finished_reasons.get(reason, 0) + 1

    def set_max_batches_in_flight(self, num_batches: int) -> None:
        """The engine keeps up to `num_batches` batches in flight (1: one step at a
        time, or async scheduling's placeholders)."""
        self.wait_for_in_flight = num_batches > 1
        self.max_num_running = self.config.max_num_seqs * num_batches

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    # ---- the step ---------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        out = SchedulerOutput()
        budget, preempted = self._schedule_running(budget, out)
        if not preempted:
            self._schedule_waiting(budget, out)
        out.finished_req_ids, self.finished_req_ids = self.finished_req_ids, set()
        out.total_num_scheduled_tokens = sum(out.num_scheduled_tokens.values())
        out.swap_out, out.swap_in = self.kv.take_copies()
        return out

    def _schedule_running(self, budget: int, out: SchedulerOutput) -> tuple[int, bool]:
        if self.by_priority:  # the highest priority first; the tail is preempted first
            self.running.sort(key=priority_key)
        preempted = False
        i = 0
        while (
            i < len(self.running) and budget > 0 and len(out.scheduled) < self.config.max_num_seqs
        ):
            request = self.running[i]
            num_new = min(
                request.num_tokens_with_placeholders - request.num_computed_tokens, budget
            )
            if num_new <= 0 or self._reached_limit(request) or self._waits_in_flight(request):
                i += 1  # waits for its in-flight token, or that token is its last
                continue
            while self.kv.allocate_slots(request, num_new) is None:
                victim = self.running.pop()  # the newest (or lowest-priority) one
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            else:
                self._make_scheduled(request, num_new, out)
                budget -= num_new
                i += 1
        return budget, preempted

    def _waits_in_flight(self, request: Request) -> bool:
        return self.wait_for_in_flight and request.num_steps_in_flight > 0

    def _reached_limit(self, request: Request) -> bool:
        """With a token in flight: would one more step exceed max_tokens / max_model_len?"""
        if request.num_output_placeholders == 0 or request.sampling_params is None:
            return False
        outputs = request.num_output_tokens + request.num_output_placeholders
        return reached_length_limit(
            request, outputs, request.num_tokens_with_placeholders, self.config.max_model_len
        )

    def _preempt(self, request: Request) -> None:
        swapped = self._wants_swap(request) and self.kv.swap_out(request)
        if not swapped:
            self.kv.free(request)
            request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(request)
        logger.warning(
            "Request %s preempted (%s): the KV cache is full; total preemptions %d",
            request.request_id,
            "swap" if swapped else "recompute",
            self.stats.num_preemptions,
        )
        if not self.running and self.kv.get_num_free_blocks() == self.kv.num_blocks:
            # Alone with the whole cache and still short: it can never fit. (Not
            # popleft: under the priority policy another request may be at the head.)
            self.waiting.remove(request)
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
            self._free(request)
            self.finished_now.append(request)

    def _wants_swap(self, request: Request) -> bool:
        mode = self.config.preemption_mode
        if mode is None:
            return request.num_computed_tokens >= SWAP_MIN_TOKENS
        return mode == "swap"

    def _schedule_waiting(self, budget: int, out: SchedulerOutput) -> None:
        skipped = self._pop_grammar_waiting()
        self._schedule_waiting_ready(budget, out)
        self.waiting.extendleft(reversed(skipped))  # first in the queue once compiled

    def _pop_grammar_waiting(self) -> list[Request]:
        """Take the requests whose grammar is still compiling out of the queue (kept
        in order for later); fail those whose grammar did not compile."""
        if not self._structured_req_ids:
            return []
        skipped: list[Request] = []
        for request in list(self.waiting):
            sor = request.structured_output_request
            if sor is None or (sor.is_ready and sor.error is None):
                continue
            self.waiting.remove(request)
            if not sor.is_ready:
                skipped.append(request)
                continue
            logger.error("Request %s: grammar failed: %s", request.request_id, sor.error)
            request.status = RequestStatus.FINISHED_ERROR
            self._free(request)
            self.finished_now.append(request)
        return skipped

    def _schedule_waiting_ready(self, budget: int, out: SchedulerOutput) -> None:
        while self.waiting and budget > 0 and self._has_room(out):
            request = self.waiting[0]
            if request.num_output_placeholders or self._waits_in_flight(request):
                break  # preempted with a step in flight: resume once it has arrived
            hits, num_hit_tokens = self.kv.get_computed_blocks(request)
            num_new = request.num_tokens - num_hit_tokens
            if num_new > budget and (request.is_pooling or not self.config.enable_chunked_prefill):
                break  # must be computed in one step
            num_new = min(num_new, budget)
            if self.kv.allocate_slots(request, num_new, hits) is None:
                break
            self.waiting.popleft()
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit_tokens
            if request.metrics is not None and request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = time.time()
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
            self._make_scheduled(request, num_new, out, from_waiting=True)
            budget -= num_new

    def _has_room(self, out: SchedulerOutput) -> bool:
        return (
            len(self.running) < self.max_num_running
            and len(out.scheduled) < self.config.max_num_seqs
        )

    def _make_scheduled(
        self, request: Request, num_new: int, out: SchedulerOutput, from_waiting: bool = False
    ) -> None:
        """Describe the step (the core's row, and for the workers the request whole
        on first sight, else what changed) and advance the request past it: its
        num_computed_tokens counts the scheduled tokens from now on, and a step that
        samples adds a placeholder for the token it will produce."""
        start = request.num_computed_tokens
        first_sight = not request.seen_by_runner
        request.seen_by_runner = True
        sp = request.sampling_params
        needs_history = request.request_id in self._history_req_ids
        num_tokens = request.num_tokens_with_placeholders
        block_ids = self.kv.get_block_ids(request.request_id)
        scheduled = ScheduledRequest(
            req_id=request.request_id,
            new_token_ids=[request.token_id_at(p) for p in range(start, start + num_new)]
            if num_new > 1
            else [request.token_id_at(start)],
            num_computed_tokens=start,
            block_ids=block_ids,
            num_tokens=num_tokens,
            sampling_params=sp,
            pooling_params=request.pooling_params,
            prompt_token_ids=request.prompt_token_ids if (first_sight or needs_history) else None,
            output_token_ids=request.output_token_ids if needs_history else None,
            num_prompt_tokens=request.num_prompt_tokens,
        )
        out.scheduled.append(scheduled)
        out.num_scheduled_tokens[request.request_id] = num_new
        add_worker_delta(out, request, scheduled, first_sight, resumed=from_waiting)
        request.num_computed_tokens = start + num_new
        request.num_steps_in_flight += 1
        if sp is not None and start + num_new == num_tokens:
            request.num_output_placeholders += 1

    # ---- after the step -----------------------------------------------------
    def update_from_output(
        self,
        scheduler_output: SchedulerOutput,
        runner_output: ModelRunnerOutput,
        grammars_advanced: Mapping[str, bool] | None = None,
    ) -> list[Request]:
        """Advance computed tokens, append sampled tokens, finish what stops.
        Returns the requests that got a new token or finished this step.
        grammars_advanced: the requests whose grammar already took this step's token
        (core/grammar_pipeline.py), and whether it could."""
        updated: list[Request] = self.finished_now
        self.finished_now = []
        grammar_tokens: list[tuple[Request, int]] = []  # advanced together, after the loop
        for i, sched in enumerate(scheduler_output.scheduled):
            request = self._end_step(sched.req_id)
            if request is None or request.is_finished:
                continue  # finished while the step ran
            if sched.samples:
                request.num_output_placeholders -= 1
            prompt_end = min(
                sched.num_prompt_tokens, sched.num_computed_tokens + sched.num_new_tokens
            )
            self.stats.prompt_tokens += max(0, prompt_end - sched.num_computed_tokens)
            if self._apply_result(request, sched, runner_output, i, grammar_tokens):
                updated.append(request)
        for request in check_grammar_stops(grammar_tokens, grammars_advanced):
            self._finish_running(request)
        return updated

    def retire(self, scheduler_output: SchedulerOutput) -> None:
        """A launched step that will give no output (its execution failed)."""
        for sched in scheduler_output.scheduled:
            self._end_step(sched.req_id)

    def _end_step(self, req_id: str) -> Request | None:
        """One step of the request is over: free a finished request's blocks once
        it has none left in flight. Returns the request (None if unknown)."""
        request = self.requests.get(req_id) or self._free_after_flight.get(req_id)
        if request is None:
            return None
        request.num_steps_in_flight -= 1
        if request.num_steps_in_flight == 0 and req_id in self._free_after_flight:
            del self._free_after_flight[req_id]
            self.kv.free(request)
        return request

    def _apply_result(
        self,
        request: Request,
        sched: ScheduledRequest,
        out: ModelRunnerOutput,
        i: int,
        grammar_tokens: list[tuple[Request, int]],
    ) -> bool:
        if sched.req_id in out.prompt_logprobs:
            request.prompt_logprobs.extend(out.prompt_logprobs[sched.req_id])
        if request.is_pooling:
            if sched.req_id not in out.pooled:
                return False
            request.pooled = out.pooled[sched.req_id]
            request.status = RequestStatus.FINISHED_STOPPED
            self._finish_running(request)
            return True
        token = out.sampled_token_ids[i]
        if token is None:
            return False
        request.output_token_ids.append(token)
        self.stats.generation_tokens += 1
        if request.metrics is not None and request.metrics.first_token_time is None:
            request.metrics.first_token_time = time.time()
        logprobs = out.logprobs[i] if out.logprobs is not None else None
        if logprobs is not None:
            request.logprobs.append(logprobs)
        if check_stop(request, self.config.max_model_len):
            self._finish_running(request)
        elif request.structured_output_request is not None:
            grammar_tokens.append((request, token))  # its grammar takes the token
        return True

    def _finish_running(self, request: Request) -> None:
        if request in self.waiting:
            self.waiting.remove(request)  # preempted while its last token was in flight
        else:
            self.running.remove(request)
        self._free(request)

    def make_stats(self) -> SchedulerStats:
        """A snapshot (a new object: the counters keep moving after it is taken)."""
        tier = self.kv.cpu_tier
        return dataclasses.replace(
            self.stats,
            num_running_reqs=len(self.running),
            num_waiting_reqs=len(self.waiting),
            kv_cache_usage=self.kv.usage,
            prefix_cache_queries=self.kv.prefix_cache_queries,
            prefix_cache_hits=self.kv.prefix_cache_hits,
            cpu_prefix_cache_hits=self.kv.cpu_prefix_cache_hits,
            kv_swapped_out_blocks=tier.num_swapped_out if tier else 0,
            kv_swapped_in_blocks=tier.num_swapped_in if tier else 0,
            finished_reasons=dict(self.stats.finished_reasons),
        )
