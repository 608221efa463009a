"""A step's sampled tokens on their way to the host.

The sampler leaves its results on the device; `AsyncModelRunnerOutput` starts a
non-blocking copy into pinned host memory and records an event right after it, so
that `get()` waits for this step only, even when the next step has already been
launched behind it on the same stream (async scheduling)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pagedllm.scheduler_output import ModelRunnerOutput, SampledLogprobs


def _to_host(tensor: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None or tensor.device.type == "cpu":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


@dataclass
class AsyncModelRunnerOutput:
    req_ids: list[str]
    sample_rows: list[int]  # index into req_ids of each sampled row
    sampled_token_ids: torch.Tensor | None  # [S] int64, host (pinned) once copied
    logprobs_token_ids: torch.Tensor | None = None  # [S, k+1]
    logprobs: torch.Tensor | None = None  # [S, k+1]
    ranks: torch.Tensor | None = None  # [S]
    prompt_logprobs: dict[str, list[SampledLogprobs]] = field(default_factory=dict)
    event: torch.cuda.Event | None = None

    @classmethod
    def start_copy(
        cls,
        req_ids: list[str],
        sample_rows: list[int],
        sampled: torch.Tensor | None,
        logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ) -> AsyncModelRunnerOutput:
        lp_ids, lp_values, lp_ranks = logprobs or (None, None, None)
        out = cls(
            req_ids,
            sample_rows,
            _to_host(sampled),
            logprobs_token_ids=_to_host(lp_ids),
            logprobs=_to_host(lp_values),
            ranks=_to_host(lp_ranks),
        )
        if sampled is not None and sampled.device.type == "cuda":
            out.event = torch.cuda.Event()
            out.event.record()
        return out

    def get(self) -> ModelRunnerOutput:
        if self.event is not None:
            self.event.synchronize()
        sampled: list[int | None] = [None] * len(self.req_ids)
        if self.sampled_token_ids is not None:
            for row, token in zip(self.sample_rows, self.sampled_token_ids.tolist()):
                sampled[row] = token
        return ModelRunnerOutput(
            req_ids=self.req_ids,
            sampled_token_ids=sampled,
            logprobs=self._unpack_logprobs(),
            prompt_logprobs=self.prompt_logprobs,
        )

    def _unpack_logprobs(self) -> list[SampledLogprobs | None] | None:
        if self.logprobs is None or self.logprobs_token_ids is None or self.ranks is None:
            return None
        return unpack_logprobs(
            self.logprobs_token_ids, self.logprobs, self.ranks, self.sample_rows, len(self.req_ids)
        )


def unpack_logprobs(
    token_ids: torch.Tensor,
    values: torch.Tensor,
    ranks: torch.Tensor,
    rows: list[int],
    num_rows: int,
) -> list[SampledLogprobs | None]:
    """One .tolist() per tensor, then a SampledLogprobs per sampled row."""
    ids_list, values_list, ranks_list = token_ids.tolist(), values.tolist(), ranks.tolist()
    result: list[SampledLogprobs | None] = [None] * num_rows
    for j, row in enumerate(rows):
        result[row] = SampledLogprobs(ids_list[j], values_list[j], ranks_list[j])
    return result
