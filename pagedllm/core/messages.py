"""What crosses between the front end and the engine core: one request in, the new
tokens of each step out. msgspec structs, sent as msgpack over ZeroMQ when the core
runs in its own process (and passed as they are when it runs in process).

msgspec over pickle (scripts/serialization_bench.py, 2 CPU cores, 2026-12-01): a
step's outputs for 256 requests encode+decode in 84-123 us with msgspec and 500-720 us
with pickle; one request of 1,024 prompt ids with its SamplingParams in 56 us and 82 us.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from pagedllm.outputs import SchedulerStats
from pagedllm.sampling_params import PoolingParams, SamplingParams
from pagedllm.scheduler_output import SampledLogprobs


class EngineCoreRequest(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One sequence for the core (a user request with n > 1 is n of these)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams | None  # resolved: EOS ids, bad words, max_tokens
    pooling_params: PoolingParams | None
    arrival_time: float
    # False: the front end needs no token before the request finishes (final-only
    # output, no stop strings): the core sends all its tokens once, at the end.
    stream_outputs: bool = True
    # Which front end (API server) sent it: its outputs go back there only.
    client_index: int = 0
    # scheduling_policy="priority": lower runs first (0 otherwise).
    priority: int = 0

    @property
    def max_tokens(self) -> int:
        """The tokens it may generate: resolved at admission into its SamplingParams
        (against max_model_len); 0 for a pooling request."""
        sp = self.sampling_params
        return 0 if sp is None or sp.max_tokens is None else sp.max_tokens


class EngineCoreOutput(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What one request got in one step (only what is new since its last output)."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[SampledLogprobs] | None = None
    new_prompt_logprobs: list[SampledLogprobs] | None = None
    finish_status: int = 0  # a finished RequestStatus, 0 while running
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    pooled: list[float] | None = None
    # Stamped by the core with its first output (0.0 afterwards).
    first_scheduled_time: float = 0.0
    first_token_time: float = 0.0

    @property
    def finished(self) -> bool:
        return self.finish_status != 0


class UtilityOutput(msgspec.Struct, array_like=True, gc=False):
    call_id: int
    result: Any = None
    error: str | None = None
    client_index: int = 0  # the caller's (call ids are counted per client)


class EngineCoreOutputs(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    outputs: list[EngineCoreOutput] = []
    scheduler_stats: SchedulerStats | None = None
    utility_output: UtilityOutput | None = None
    # Set once, when the core cannot run another step (a worker died): the reason.
    engine_dead: str | None = None


class RequestType(enum.IntEnum):
    ADD = 0
    ABORT = 1
    UTILITY = 2
    SHUTDOWN = 3  # no payload


class UtilityRequest(msgspec.Struct, array_like=True, gc=False):
    call_id: int
    method: str
    args: list[Any] = []
    client_index: int = 0


def make_encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def request_decoder(request_type: RequestType) -> msgspec.msgpack.Decoder[Any]:
    if request_type == RequestType.ADD:
        return msgspec.msgpack.Decoder(EngineCoreRequest)
    if request_type == RequestType.ABORT:
        return msgspec.msgpack.Decoder(tuple[int, list[str]])  # (finish status, ids)
    return msgspec.msgpack.Decoder(UtilityRequest)


def outputs_decoder() -> msgspec.msgpack.Decoder[EngineCoreOutputs]:
    return msgspec.msgpack.Decoder(EngineCoreOutputs)
