"""The random dataset of `pagedllm bench serve` (vLLM's `--dataset-name random`):
seeded random token ids, decoded with the tokenizer and sent as text.

Lengths follow vLLM's `--random-range-ratio` r: each request's input length is drawn
uniformly from [input_len * (1 - r), input_len * (1 + r)] (the same for the output
length), so r = 0 gives every request exactly input_len / output_len tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Re-encoding a decoded random id sequence can change its length (BPE merges across
# word boundaries); top the ids up and try again this many times before accepting.
_MAX_LENGTH_FIXES = 10


@dataclass
class SampleRequest:
    prompt: str
    prompt_len: int
    expected_output_len: int
    prompt_token_ids: list[int]


def length_range(length: int, range_ratio: float, minimum: int) -> tuple[int, int]:
    """The inclusive [lo, hi] range of a length under vLLM's --random-range-ratio."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    lo = max(minimum, int(length * (1 - range_ratio)))
    hi = max(lo, int(length * (1 + range_ratio)))
    return lo, hi


def allowed_token_ids(tokenizer: Any) -> np.ndarray:
    """Every id of the vocabulary that is not a special token."""
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    return np.setdiff1d(np.arange(len(tokenizer), dtype=np.int64), special)


def _fit_prompt(
    tokenizer: Any,
    prompt: str,
    encoded: list[int],
    target: int,
    rng: np.random.Generator,
    allowed: np.ndarray,
) -> tuple[str, list[int]]:
    """Text whose re-encoding has exactly `target` tokens where possible (BPE may need
    a few truncations or top-ups; a word-level tokenizer never comes here)."""
    for _ in range(_MAX_LENGTH_FIXES):
        if len(encoded) == target:
            break
        if len(encoded) > target:
            encoded = encoded[:target]
        else:
            encoded = encoded + rng.choice(allowed, size=target - len(encoded)).tolist()
        prompt = tokenizer.decode(encoded)
        encoded = list(tokenizer.encode(prompt, add_special_tokens=False))
    return prompt, encoded


def _decode_encode(tokenizer: Any, ids: list[list[int]]) -> tuple[list[str], list[list[int]]]:
    """Decode each id list and encode the texts again, in two batch calls; through the
    Rust tokenizer of a fast tokenizer when there is one (transformers' wrappers check
    every id in Python, which costs seconds for a million ids)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        prompts = tokenizer.batch_decode(ids)
        return prompts, tokenizer(prompts, add_special_tokens=False)["input_ids"]
    prompts = backend.decode_batch(ids, skip_special_tokens=False)
    encodings = backend.encode_batch(prompts, add_special_tokens=False)
    return prompts, [e.ids for e in encodings]


def sample_random_requests(
    tokenizer: Any,
    num_requests: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    seed: int = 0,
) -> list[SampleRequest]:
    """`num_requests` prompts of random non-special token ids (seeded), as text. The
    decoding and re-encoding run as one batch each (the tokenizer's threads)."""
    rng = np.random.default_rng(seed)
    in_lo, in_hi = length_range(input_len, range_ratio, minimum=1)
    out_lo, out_hi = length_range(output_len, range_ratio, minimum=1)
    input_lens = rng.integers(in_lo, in_hi + 1, size=num_requests).tolist()
    output_lens = rng.integers(out_lo, out_hi + 1, size=num_requests).tolist()
    allowed = allowed_token_ids(tokenizer)
    ids = [rng.choice(allowed, size=n).tolist() for n in input_lens]
    prompts, encodings = _decode_encode(tokenizer, ids)
    requests = []
    for prompt, encoded, in_len, out_len in zip(prompts, encodings, input_lens, output_lens):
        prompt, encoded = _fit_prompt(tokenizer, prompt, list(encoded), in_len, rng, allowed)
        requests.append(SampleRequest(prompt, len(encoded), out_len, encoded))
    return requests
