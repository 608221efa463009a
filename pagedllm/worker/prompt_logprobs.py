"""Prompt logprobs (`SamplingParams.prompt_logprobs`): the log-probability of each
prompt token given the tokens before it, computed from the hidden states of the
step that prefills it (chunk by chunk with chunked prefill)."""

from __future__ import annotations

import torch

from pagedllm.layers.sampler import compute_prompt_logprobs
from pagedllm.models.interfaces import ModelForCausalLM
from pagedllm.scheduler_output import ScheduledRequest
from pagedllm.worker.async_output import AsyncModelRunnerOutput, unpack_logprobs
from pagedllm.worker.input_prep import StepInputs


def add_prompt_logprobs(
    model: ModelForCausalLM,  # compute_logits(hidden) -> [N, V] float32
    scheduled: list[ScheduledRequest],
    inputs: StepInputs,
    hidden: torch.Tensor,
    output: AsyncModelRunnerOutput,
) -> None:
    """Fill output.prompt_logprobs for the requests of this step that ask for them and
    prefill prompt tokens in it."""
    qsl = inputs.attn_metadata.query_start_loc_cpu
    assert qsl is not None
    for i, s in enumerate(scheduled):
        sp = s.sampling_params
        if sp is None or sp.prompt_logprobs is None or s.num_computed_tokens >= s.num_prompt_tokens:
            continue
        prompt = s.prompt_token_ids
        assert prompt is not None  # the worker's rows carry it (worker/request_state.py)
        # Position p predicts prompt token p + 1; positions past the prompt are not scored.
        start = s.num_computed_tokens
        end = min(start + s.num_new_tokens, s.num_prompt_tokens - 1)
        if end <= start:
            continue
        lo = int(qsl[i])
        logits = model.compute_logits(hidden[lo : lo + end - start])
        targets = torch.tensor(prompt[start + 1 : end + 1], device=logits.device)
        out = compute_prompt_logprobs(logits, targets, sp.prompt_logprobs)
        unpacked = unpack_logprobs(
            out.logprobs_token_ids, out.logprobs, out.ranks, list(range(end - start)), end - start
        )
        output.prompt_logprobs[s.req_id] = [lp for lp in unpacked if lp is not None]
