"""The sampler: logits [N, V] of the rows that sample this step -> token ids
(+ logprobs), in vLLM v1's order:

    raw logprobs       log_softmax(raw logits), only if some row asked for logprobs
    restrict           the grammar bitmask (structured outputs), allowed_token_ids, min_tokens stop ids / bad words (-inf), logit_bias
    penalties          repetition (prompt + output tokens), frequency, presence (output tokens)
    greedy rows        argmax of the processed logits
    random rows        / temperature -> top-k -> top-p -> softmax -> min-p -> exponential race

The exponential race samples token argmax_i(p_i / E_i) with E_i ~ Exponential(1),
which draws i with probability p_i (the Gumbel-max trick in another form) and
needs no cumulative sums. A seeded row draws its E from its own generator, one
full row of V values per step, so its tokens do not depend on the other rows of
the batch; unseeded rows share one batched draw from the global RNG.

The input logits are never modified. The hot path has no host sync: the only
Python loop over rows is the seeded-row draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pagedllm.layers.grammar_bitmask import grammar_masked_logits
from pagedllm.layers.sampling_metadata import PenaltyState, SamplingMetadata

_SAMPLING_EPS = 1e-5
# Exponential noise is clamped away from 0 so that p / E is never 0 / 0 = NaN
# (argmax would pick a NaN, i.e. a masked token).
_MIN_NOISE = torch.finfo(torch.float32).tiny
# Prompt logprobs are computed over chunks of rows of at most this many elements,
# so a long prompt never holds a second [P, V] float32 tensor at once.
_PROMPT_LOGPROBS_CHUNK_ELEMS = 1 << 25


@dataclass
class LogprobsTensors:
    logprobs_token_ids: torch.Tensor  # [N, k+1] int64: the chosen token, then the top-k
    logprobs: torch.Tensor  # [N, k+1] float32, same order
    ranks: torch.Tensor  # [N] int64, rank of the chosen token (1 = most likely)


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [N] int64
    # Only when metadata.max_num_logprobs is not None; k = max_num_logprobs for every
    # row (rows that asked for fewer keep the first 1 + their own k columns).
    logprobs_token_ids: torch.Tensor | None = None  # [N, k+1] int64
    logprobs: torch.Tensor | None = None  # [N, k+1] float32
    ranks: torch.Tensor | None = None  # [N] int64


class Sampler(nn.Module):
    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """logits [N, V] float32 (raw model output) -> one token per row."""
        raw_logprobs = None
        if metadata.max_num_logprobs is not None:
            raw_logprobs = compute_logprobs(logits)
        logits = apply_logits_processing(logits.float(), metadata)
        sampled = self._sample(logits, metadata)
        if raw_logprobs is None:
            return SamplerOutput(sampled_token_ids=sampled)
        assert metadata.max_num_logprobs is not None
        lp = gather_logprobs(raw_logprobs, metadata.max_num_logprobs, sampled)
        return SamplerOutput(sampled, lp.logprobs_token_ids, lp.logprobs, lp.ranks)

    def _sample(self, logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        if _fused_sampling_applies(logits, metadata):
            from pagedllm.layers.kernels.triton_gumbel_sample import gumbel_sample

            assert metadata.temperature is not None
            seed = int(torch.randint(0, 2**31 - 1, (1,)))  # host RNG: no device sync
            return gumbel_sample(logits, metadata.temperature, seed)
        greedy = None if metadata.all_random else logits.argmax(dim=-1)
        if metadata.all_greedy:
            assert greedy is not None
            return greedy
        random = random_sample(logits, metadata)
        if greedy is None:
            return random
        assert metadata.temperature is not None
        return torch.where(metadata.temperature < _SAMPLING_EPS, greedy, random)


def _fused_sampling_applies(logits: torch.Tensor, md: SamplingMetadata) -> bool:
    """Plain temperature sampling of unseeded rows on a GPU: one fused Triton pass
    (triton_gumbel_sample.py) instead of softmax + noise + argmax."""
    return (
        logits.is_cuda
        and md.all_random
        and not md.generators
        and md.top_k is None
        and md.top_p is None
        and md.min_p is None
    )


def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """[N, V] -> [N, V] float32 log-probabilities of the raw distribution."""
    return logits.log_softmax(dim=-1, dtype=torch.float32)


def gather_logprobs(logprobs: torch.Tensor, k: int, token_ids: torch.Tensor) -> LogprobsTensors:
    """The chosen token's logprob and rank, then the k most likely tokens (vLLM's layout).

    The rank counts tokens at least as likely as the chosen one, so ties rank low."""
    token_ids = token_ids.to(torch.int64).unsqueeze(-1)  # [N, 1]
    token_logprobs = logprobs.gather(-1, token_ids)  # [N, 1]
    ranks = (logprobs >= token_logprobs).sum(dim=-1)  # [N] int64
    if k <= 0:
        return LogprobsTensors(token_ids, token_logprobs, ranks)
    top_logprobs, top_ids = logprobs.topk(k, dim=-1)
    return LogprobsTensors(
        torch.cat([token_ids, top_ids], dim=1),
        torch.cat([token_logprobs, top_logprobs], dim=1),
        ranks,
    )


def compute_prompt_logprobs(
    logits: torch.Tensor, next_token_ids: torch.Tensor, k: int
) -> LogprobsTensors:
    """Prompt logprobs: logits [P, V] at prompt positions, next_token_ids [P] the
    prompt token each position predicts; k top logprobs (-1: all of V) per position."""
    vocab_size = logits.shape[-1]
    k = vocab_size if k == -1 else min(k, vocab_size)
    chunk = max(1, _PROMPT_LOGPROBS_CHUNK_ELEMS // vocab_size)
    parts = [
        gather_logprobs(compute_logprobs(logits[i : i + chunk]), k, next_token_ids[i : i + chunk])
        for i in range(0, logits.shape[0], chunk)
    ]
    if len(parts) == 1:
        return parts[0]
    return LogprobsTensors(
        torch.cat([p.logprobs_token_ids for p in parts]),
        torch.cat([p.logprobs for p in parts]),
        torch.cat([p.ranks for p in parts]),
    )


def apply_logits_processing(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Masks, logit bias and penalties; returns a new tensor when any applies."""
    md = metadata
    if md.allowed_token_mask is None and md.banned_tokens is None and md.logit_bias is None:
        if md.penalties is None and md.grammar_bitmask is None:
            return logits
    # Everything below works in place on our own copy (under a grammar, the masked one).
    if md.grammar_bitmask is not None:
        logits = grammar_masked_logits(logits, md.grammar_bitmask)
    else:
        logits = logits.clone()
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    if md.allowed_token_mask is not None:
        rows, mask = md.allowed_token_mask.rows, md.allowed_token_mask.mask
        logits.index_copy_(0, rows, logits.index_select(0, rows).masked_fill_(mask, neg_inf))
    if md.banned_tokens is not None:
        logits.index_put_((md.banned_tokens.rows, md.banned_tokens.token_ids), neg_inf)
    if md.logit_bias is not None:
        bias = md.logit_bias
        assert bias.values is not None
        logits.index_put_((bias.rows, bias.token_ids), bias.values, accumulate=True)
    if md.penalties is not None:
        apply_penalties_(logits, md.penalties)
    return logits


def apply_penalties_(logits: torch.Tensor, state: PenaltyState) -> None:
    """vLLM's penalties, in place, on the penalty rows only:

    repetition r: a token seen in the prompt or the output: l > 0 -> l / r, else l * r
    frequency  f: l -= f * (times the token was generated)
    presence   p: l -= p * (token was generated at least once)
    """
    sub = logits.index_select(0, state.rows)  # [R, V]
    counts = torch.zeros_like(sub)  # [R, V] float: generated-token counts
    out = state.output_tokens
    ones = torch.ones(out.rows.shape[0], dtype=sub.dtype, device=sub.device)
    counts.index_put_((out.rows, out.token_ids), ones, accumulate=True)
    generated = counts > 0
    if state.repetition_penalties is not None:
        seen = generated.clone()
        if state.prompt_tokens is not None:
            seen[state.prompt_tokens.rows, state.prompt_tokens.token_ids] = True
        penalty = state.repetition_penalties.unsqueeze(1)
        penalized = torch.where(sub > 0, sub / penalty, sub * penalty)
        sub = torch.where(seen, penalized, sub)
    if state.frequency_penalties is not None:
        sub -= state.frequency_penalties.unsqueeze(1) * counts
    if state.presence_penalties is not None:
        sub -= state.presence_penalties.unsqueeze(1) * generated
    logits.index_copy_(0, state.rows, sub)


def random_sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, then the exponential race. Greedy rows (in a
    mixed batch) get temperature 1 here; the caller replaces their result by argmax."""
    temperature = metadata.temperature
    assert temperature is not None
    if not metadata.all_random:
        temperature = torch.where(temperature < _SAMPLING_EPS, 1.0, temperature)
    logits = logits / temperature.unsqueeze(1)  # a new tensor: in-place from here on
    logits = apply_top_k_top_p_(logits, metadata.top_k, metadata.max_top_k, metadata.top_p)
    probs = logits.softmax(dim=-1)
    if metadata.min_p is not None:
        apply_min_p_(probs, metadata.min_p)
    return exponential_race(probs, metadata.generators)


def apply_top_k_top_p_(
    logits: torch.Tensor, top_k: torch.Tensor | None, max_top_k: int, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Set logits outside each row's top-k / top-p set to -inf (in place).

    top_k [N] int64 (0 = off), top_p [N] float32 (1.0 = off). Top-p keeps the
    smallest set of most likely tokens whose mass reaches top_p (at least one)."""
    if top_p is None:
        return logits if top_k is None else apply_top_k_only_(logits, top_k, max_top_k)
    vocab_size = logits.shape[-1]
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)  # ascending
    if top_k is not None:
        k = torch.where(top_k == 0, vocab_size, top_k)
        kth_largest = logits_sort.gather(1, (vocab_size - k).unsqueeze(1))  # [N, 1]
        logits_sort.masked_fill_(logits_sort < kth_largest, float("-inf"))
    cum_probs = logits_sort.softmax(dim=-1).cumsum(dim=-1)  # [N, V], ascending mass
    drop = cum_probs <= (1.0 - top_p).unsqueeze(1)
    drop[:, -1] = False  # the most likely token always stays
    logits_sort.masked_fill_(drop, float("-inf"))
    return logits.scatter_(1, logits_idx, logits_sort)


def apply_top_k_only_(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """Top-k without a full sort: one topk(max_top_k) gives every row's k-th largest."""
    off = (top_k == 0).unsqueeze(1)
    k_index = (top_k.clamp(min=1) - 1).unsqueeze(1)  # [N, 1]
    kth_largest = logits.topk(max_top_k, dim=-1).values.gather(1, k_index)
    kth_largest.masked_fill_(off, float("-inf"))
    return logits.masked_fill_(logits < kth_largest, float("-inf"))


def apply_min_p_(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Zero tokens less likely than min_p * (the row's top probability), in place.
    No renormalisation: the exponential race is invariant to scaling a row."""
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return probs.masked_fill_(probs < threshold, 0.0)


def exponential_race(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """argmax(p / E), E ~ Exponential(1): row i draws token j with probability p[i, j]
    (rows need not be normalised). Modifies probs."""
    noise = torch.empty_like(probs)
    if len(generators) < probs.shape[0]:
        # One batched draw for the unseeded rows. On the CPU, -log(U) with U ~ U(0, 1) is
        # the same Exponential(1) and about 4x faster there than exponential_().
        if probs.is_cuda:
            noise.exponential_()
        else:
            noise.uniform_().log_().neg_()
    for row, generator in generators.items():
        # Exactly what torch.empty(V).exponential_(generator=g) would draw.
        noise[row].exponential_(generator=generator)
    noise.clamp_(min=_MIN_NOISE)
    return probs.div_(noise).argmax(dim=-1)
