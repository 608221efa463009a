"""What the sampler needs to know about one step: per-row sampling parameters and
per-row state (generated tokens, generators), as device tensors built once per step.

Rows are the requests that sample a token this step, in logits order (row i of
`logits [N, V]` belongs to `params_list[i]`). Everything optional is `None` when
no row uses it, so the common cases (all greedy, plain temperature sampling) cost
no tensors and no kernels:

    all_greedy    -> only argmax; temperature/top-k/top-p/min-p are None
    no penalties  -> `penalties` is None (no [N, V] count tensors are made)
    no bias/mask  -> `logit_bias`, `allowed_token_mask`, `banned_tokens` are None

Sparse per-row token sets (logit_bias, min_tokens stop ids, bad words, penalty
histories) are stored flattened as (row index, token id) pairs, so their size is
the number of pairs, not N * longest list.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from pagedllm.layers.grammar_bitmask import GrammarBitmask
from pagedllm.layers.host_to_device import tensor_to_device
from pagedllm.sampling_params import SamplingParams

_SAMPLING_EPS = 1e-5  # the same threshold as SamplingParams: temperature below it is greedy


@dataclass
class SparseTokens:
    """(row, token id) pairs, optionally with one float value each."""

    rows: torch.Tensor  # [P] int64, row index (into the batch, or into a sub-batch)
    token_ids: torch.Tensor  # [P] int64, each in [0, vocab_size)
    values: torch.Tensor | None = None  # [P] float32 (logit_bias only)


@dataclass
class RowMask:
    """A dense token mask for a subset of the rows."""

    rows: torch.Tensor  # [R] int64, batch rows the mask applies to
    mask: torch.Tensor  # [R, V] bool, True = token not allowed (set to -inf)


@dataclass
class PenaltyState:
    """Penalty parameters and token histories of the rows that use any penalty.

    Only those R rows are stored; `output_tokens.rows` / `prompt_tokens.rows` index
    into `rows` (0..R-1), not into the batch."""

    rows: torch.Tensor  # [R] int64, batch rows with a penalty
    presence_penalties: torch.Tensor | None  # [R] float32, None when all are 0
    frequency_penalties: torch.Tensor | None  # [R] float32, None when all are 0
    repetition_penalties: torch.Tensor | None  # [R] float32, None when all are 1
    output_tokens: SparseTokens  # every generated token of each penalty row (repeats kept)
    prompt_tokens: SparseTokens | None  # prompt tokens of repetition-penalty rows


@dataclass
class SamplingMetadata:
    num_rows: int  # N
    vocab_size: int  # V, the logits width
    all_greedy: bool
    all_random: bool
    temperature: torch.Tensor | None  # [N] float32, 0.0 on greedy rows; None if all_greedy
    top_p: torch.Tensor | None  # [N] float32 in (0, 1]; None when every row has 1.0
    top_k: torch.Tensor | None  # [N] int64, 0 = off; None when every row is off
    max_top_k: int  # host copy of max(top_k), so top-k needs no device sync
    min_p: torch.Tensor | None  # [N] float32; None when every row has 0.0
    generators: dict[int, torch.Generator]  # row -> generator, seeded random rows only
    max_num_logprobs: int | None  # k of the widest logprobs request; None: nobody asked
    penalties: PenaltyState | None
    logit_bias: SparseTokens | None  # added to the logits (values set)
    allowed_token_mask: RowMask | None  # rows with allowed_token_ids
    banned_tokens: SparseTokens | None  # set to -inf: min_tokens stop ids and bad words
    # Structured outputs: the rows under a grammar and what each may sample (set by
    # the model runner from the SchedulerOutput's bitmask).
    grammar_bitmask: GrammarBitmask | None = None

    @classmethod
    def build(
        cls,
        params_list: Sequence[SamplingParams],
        output_token_ids_list: Sequence[Sequence[int]],
        prompt_token_ids_list: Sequence[Sequence[int] | None] | None,
        generators_list: Sequence[torch.Generator | None],
        device: torch.device | str,
        vocab_size: int,
        *,
        bad_words_token_ids_list: Sequence[Sequence[Sequence[int]] | None] | None = None,
    ) -> SamplingMetadata:
        """Build the step's metadata from Python lists in one pass per field.

        `output_token_ids_list[i]` must hold row i's generated tokens whenever the
        row uses penalties, min_tokens or bad words (it may be empty otherwise);
        `prompt_token_ids_list[i]` is read only for repetition-penalty rows.
        Token ids (logit_bias, allowed_token_ids) are inside the vocabulary: admission
        checked them (`engine/validation.py: verify_token_ids`), so a step cannot fail
        on one request's ids."""
        device = torch.device(device)
        n = len(params_list)
        greedy = [p.temperature < _SAMPLING_EPS for p in params_list]  # SamplingType.GREEDY
        all_greedy, all_random = all(greedy), not any(greedy)
        knobs = _Knobs() if all_greedy else _build_knobs(params_list, vocab_size, device)
        generators = {
            i: g for i, g in enumerate(generators_list) if g is not None and not greedy[i]
        }
        return cls(
            num_rows=n,
            vocab_size=vocab_size,
            all_greedy=all_greedy,
            all_random=all_random,
            temperature=knobs.temperature,
            top_p=knobs.top_p,
            top_k=knobs.top_k,
            max_top_k=knobs.max_top_k,
            min_p=knobs.min_p,
            generators=generators,
            max_num_logprobs=_max_num_logprobs(params_list, vocab_size),
            penalties=_build_penalties(
                params_list, output_token_ids_list, prompt_token_ids_list, vocab_size, device
            ),
            logit_bias=_build_logit_bias(params_list, device),
            allowed_token_mask=_build_allowed_mask(params_list, vocab_size, device),
            banned_tokens=_build_banned(
                params_list, output_token_ids_list, bad_words_token_ids_list, vocab_size, device
            ),
        )


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A per-request generator for a seeded request (create once, reuse every step)."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator


def _to_device(values: object, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host list/array -> device tensor; pinned + non-blocking towards a GPU."""
    if isinstance(values, np.ndarray):
        tensor = torch.from_numpy(values).to(dtype)
    else:
        tensor = torch.tensor(values, dtype=dtype)
    return tensor_to_device(tensor, device)


class _Knobs(NamedTuple):
    temperature: torch.Tensor | None = None
    top_p: torch.Tensor | None = None
    top_k: torch.Tensor | None = None
    max_top_k: int = 0
    min_p: torch.Tensor | None = None


def _build_knobs(
    params_list: Sequence[SamplingParams], vocab_size: int, device: torch.device
) -> _Knobs:
    """Temperature and the truncation knobs; a knob no row uses stays None."""
    temperature = [p.temperature if p.temperature >= _SAMPLING_EPS else 0.0 for p in params_list]
    top_p = [p.top_p for p in params_list]
    # top_k >= V keeps everything: normalise it to 0 (off) so max_top_k <= V.
    top_k = [p.top_k if 0 < p.top_k < vocab_size else 0 for p in params_list]
    min_p = [p.min_p for p in params_list]
    max_top_k = max(top_k)
    return _Knobs(
        temperature=_to_device(temperature, torch.float32, device),
        top_p=_to_device(top_p, torch.float32, device) if min(top_p) < 1.0 else None,
        top_k=_to_device(top_k, torch.int64, device) if max_top_k > 0 else None,
        max_top_k=max_top_k,
        min_p=_to_device(min_p, torch.float32, device) if max(min_p) > 0.0 else None,
    )


def _max_num_logprobs(params_list: Sequence[SamplingParams], vocab_size: int) -> int | None:
    requested = [p.logprobs for p in params_list if p.logprobs is not None]
    if not requested:
        return None
    # -1 asks for the whole vocabulary (vLLM).
    return min(vocab_size, max(vocab_size if k == -1 else k for k in requested))


def _flatten(
    lists: Sequence[Sequence[int]], rows: Sequence[int], device: torch.device
) -> SparseTokens:
    """Token lists -> (row, token) pairs, every token of lists[j] tagged with rows[j]."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    total = int(lengths.sum())
    token_ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=total)
    row_ids = np.repeat(np.asarray(rows, dtype=np.int64), lengths)
    return SparseTokens(
        _to_device(row_ids, torch.int64, device), _to_device(token_ids, torch.int64, device)
    )


def _build_penalties(
    params_list: Sequence[SamplingParams],
    output_token_ids_list: Sequence[Sequence[int]],
    prompt_token_ids_list: Sequence[Sequence[int] | None] | None,
    vocab_size: int,
    device: torch.device,
) -> PenaltyState | None:
    rows = [
        i
        for i, p in enumerate(params_list)
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0
    ]
    if not rows:
        return None
    params = [params_list[i] for i in rows]
    presence = [p.presence_penalty for p in params]
    frequency = [p.frequency_penalty for p in params]
    repetition = [p.repetition_penalty for p in params]
    local = range(len(rows))
    output_tokens = _flatten([output_token_ids_list[i] for i in rows], local, device)
    prompt_tokens = None
    rep_local = [r for r in local if repetition[r] != 1.0]
    if rep_local:
        prompts = prompt_token_ids_list or [None] * len(params_list)
        prompt_lists = [prompts[rows[r]] or [] for r in rep_local]
        prompt_tokens = _flatten(prompt_lists, rep_local, device)
    return PenaltyState(
        rows=_to_device(rows, torch.int64, device),
        presence_penalties=_to_device(presence, torch.float32, device) if any(presence) else None,
        frequency_penalties=_to_device(frequency, torch.float32, device)
        if any(frequency)
        else None,
        repetition_penalties=_to_device(repetition, torch.float32, device) if rep_local else None,
        output_tokens=output_tokens,
        prompt_tokens=prompt_tokens,
    )


def _build_logit_bias(
    params_list: Sequence[SamplingParams], device: torch.device
) -> SparseTokens | None:
    rows: list[int] = []
    token_ids: list[int] = []
    values: list[float] = []
    for i, p in enumerate(params_list):
        if not p.logit_bias:
            continue
        for token_id, bias in p.logit_bias.items():
            rows.append(i)
            token_ids.append(token_id)
            values.append(bias)
    if not rows:
        return None
    return SparseTokens(
        _to_device(rows, torch.int64, device),
        _to_device(token_ids, torch.int64, device),
        _to_device(values, torch.float32, device),
    )


def _build_allowed_mask(
    params_list: Sequence[SamplingParams], vocab_size: int, device: torch.device
) -> RowMask | None:
    rows = [i for i, p in enumerate(params_list) if p.allowed_token_ids is not None]
    if not rows:
        return None
    mask = torch.ones(len(rows), vocab_size, dtype=torch.bool)
    for r, i in enumerate(rows):
        mask[r, torch.tensor(params_list[i].allowed_token_ids, dtype=torch.int64)] = False
    return RowMask(
        _to_device(rows, torch.int64, device), _to_device(mask.numpy(), torch.bool, device)
    )


def _build_banned(
    params_list: Sequence[SamplingParams],
    output_token_ids_list: Sequence[Sequence[int]],
    bad_words_token_ids_list: Sequence[Sequence[Sequence[int]] | None] | None,
    vocab_size: int,
    device: torch.device,
) -> SparseTokens | None:
    """Tokens forced to -inf: the stop ids of rows still short of min_tokens (vLLM
    masks `all_stop_token_ids`, which holds EOS unless ignore_eos), and the last
    token of each bad word whose other tokens end the output so far."""
    rows: list[int] = []
    token_ids: list[int] = []
    for i, p in enumerate(params_list):
        bad_words = bad_words_token_ids_list[i] if bad_words_token_ids_list is not None else None
        if not p.min_tokens and not bad_words:
            continue  # the common case: nothing to ban
        banned: set[int] = set()
        output = output_token_ids_list[i]
        if p.min_tokens and len(output) < p.min_tokens:
            banned.update(p.all_stop_token_ids)
        if bad_words:
            banned.update(_bad_word_tokens(bad_words, output))
        # Stop ids may exceed the vocabulary (user input): they can never be sampled anyway.
        in_vocab = sorted(t for t in banned if 0 <= t < vocab_size)
        rows.extend([i] * len(in_vocab))
        token_ids.extend(in_vocab)
    if not rows:
        return None
    return SparseTokens(
        _to_device(rows, torch.int64, device), _to_device(token_ids, torch.int64, device)
    )


def _bad_word_tokens(bad_words: Sequence[Sequence[int]], output: Sequence[int]) -> list[int]:
    """vLLM's rule: ban a bad word's last token when its prefix ends the output."""
    banned = []
    for word in bad_words:
        prefix_len = len(word) - 1
        if prefix_len > len(output) or not word:
            continue
        if prefix_len == 0 or list(output[len(output) - prefix_len :]) == list(word[:-1]):
            banned.append(word[-1])
    return banned
