"""Admission (`resolve_sampling_params`): the sampling parameters are validated again
on the engine's private copy, and the per-request cost limits (n, logprobs) apply."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pagedllm.engine.input_processor import resolve_sampling_params
from pagedllm.sampling_params import SamplingParams

VOCAB = 1000


def model_config(max_logprobs: int = 20, vocab: int = VOCAB) -> Any:
    return SimpleNamespace(
        vocab_size=vocab, max_logprobs=max_logprobs, max_model_len=64, generation_config={}
    )


def admit(sp: SamplingParams, max_logprobs: int = 20, max_num_seqs: int | None = 8) -> Any:
    return resolve_sampling_params(
        sp, 4, model_config(max_logprobs), eos_token_id=0, max_num_seqs=max_num_seqs
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 0), ("min_p", 3), ("seed", 2**70), ("bad_words", [1, 2]), ("top_p", 0.0)],
)
def test_fields_changed_after_construction_fail_at_admission(field: str, value: Any) -> None:
    sp = SamplingParams(max_tokens=4)
    setattr(sp, field, value)
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        admit(sp)


def test_admission_never_changes_the_callers_object() -> None:
    sp = SamplingParams(stop="x", max_tokens=None)
    resolved = admit(sp)
    assert resolved is not sp and sp.max_tokens is None and resolved.stop == ["x"]
    assert resolved.max_tokens == 64 - 4  # the rest of the context, resolved once


@pytest.mark.parametrize("field", ["n", "best_of"])
def test_n_and_best_of_are_capped_by_max_num_seqs(field: str) -> None:
    admit(SamplingParams(n=8, best_of=8))
    with pytest.raises(ValueError, match=rf"^{field} must be at most max_num_seqs=8, got 9"):
        admit(SamplingParams(n=9) if field == "n" else SamplingParams(best_of=9))


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
def test_logprob_counts_are_capped_by_max_logprobs(field: str) -> None:
    admit(SamplingParams(**{field: 20}))
    with pytest.raises(ValueError, match=rf"^{field} must be at most max_logprobs=20, got 21"):
        admit(SamplingParams(**{field: 21}))


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
def test_minus_one_means_the_vocabulary_only_when_the_cap_allows(field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}=-1 \(the whole vocabulary\)"):
        admit(SamplingParams(**{field: -1}))
    admit(SamplingParams(**{field: -1}), max_logprobs=-1)  # no cap
    admit(SamplingParams(**{field: -1}), max_logprobs=VOCAB)  # the cap covers V
    admit(SamplingParams(**{field: 5000}), max_logprobs=-1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"logit_bias": {VOCAB: 1.0}}, "logit_bias"),
        ({"allowed_token_ids": [VOCAB]}, "allowed_token_ids"),
        ({"stop_token_ids": [VOCAB]}, "stop_token_ids"),
    ],
)
def test_token_ids_outside_the_vocabulary_fail_at_admission(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        admit(SamplingParams(**kwargs))


class _Tokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % VOCAB for c in text]


def test_a_lone_surrogate_is_a_value_error_naming_the_field() -> None:
    from pagedllm.engine.input_processor import process_prompt

    with pytest.raises(ValueError, match=r"^prompt is not valid Unicode"):
        process_prompt("\ud800abc", _Tokenizer(), model_config())
    sp = SamplingParams(bad_words=["ok", "\udfffx"])
    with pytest.raises(ValueError, match=r"^bad_words is not valid Unicode"):
        resolve_sampling_params(sp, 4, model_config(), 0, tokenizer=_Tokenizer())


def test_prompt_token_ids_come_out_as_plain_ints() -> None:
    import numpy as np

    from pagedllm.engine.input_processor import process_prompt

    for ids in ([5, 6, 7], list(np.array([5, 6, 7], dtype=np.int64))):
        processed = process_prompt({"prompt_token_ids": ids}, None, model_config())
        assert processed.prompt_token_ids == [5, 6, 7]
        assert all(type(t) is int for t in processed.prompt_token_ids)
    with pytest.raises(ValueError, match="prompt_token_ids"):
        process_prompt({"prompt_token_ids": [5, VOCAB]}, None, model_config())


def test_truncate_prompt_tokens_keeps_the_last_tokens() -> None:
    from pagedllm.engine.input_processor import process_prompt

    ids = list(range(10, 90))  # 80 ids: longer than max_model_len=64
    kept = process_prompt({"prompt_token_ids": ids}, None, model_config(), truncate_prompt_tokens=5)
    assert kept.prompt_token_ids == ids[-5:]
    whole = process_prompt({"prompt_token_ids": ids[:7]}, None, model_config(), False, False, 9)
    assert whole.prompt_token_ids == ids[:7]
    to_context = process_prompt({"prompt_token_ids": ids}, None, model_config(), False, True, -1)
    assert to_context.prompt_token_ids == ids[-64:]  # -1: max_model_len
    with pytest.raises(ValueError, match="maximum context length"):
        process_prompt({"prompt_token_ids": ids}, None, model_config(), False, True)
    with pytest.raises(ValueError, match="^truncate_prompt_tokens must be -1 or at least 1"):
        process_prompt({"prompt_token_ids": ids}, None, model_config(), truncate_prompt_tokens=0)
