"""SamplingParams validation: the one `verify()` that construction and admission
share; every bad value is a ValueError naming its field (issue 14)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pagedllm.sampling_params import SEED_MAX, SEED_MIN, SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": 2**70}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"bad_words": [1, 2]}, "bad_words"),
        ({"bad_words": [[1, 2], [3]]}, "bad_words"),
        ({"bad_words": 7}, "bad_words"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"n": "2"}, "n"),
        ({"min_p": 3}, "min_p"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"logprobs": -2}, "logprobs"),
        ({"prompt_logprobs": -5}, "prompt_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stop_token_ids": ["a"]}, "stop_token_ids"),
        ({"allowed_token_ids": "12"}, "allowed_token_ids"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"logit_bias": {1: "big"}}, "logit_bias"),
        ({"logit_bias": {1: float("nan")}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"output_kind": 1}, "output_kind"),
    ],
)
def test_bad_values_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("seed", [SEED_MIN, -1, 0, 2**32, SEED_MAX])
def test_every_64_bit_seed_is_accepted(seed: int) -> None:
    assert SamplingParams(seed=seed).seed == seed


def test_numpy_and_tuple_values_become_python_types() -> None:
    sp = SamplingParams(
        n=np.int64(2), seed=np.int32(7), temperature=np.float32(0.5), stop=("a", "b"),
        stop_token_ids=(np.int64(3),), logit_bias={"5": 1}, top_k=-1,
    )  # fmt: skip
    assert (type(sp.n), type(sp.seed), type(sp.temperature)) == (int, int, float)
    assert sp.stop == ["a", "b"] and sp.stop_token_ids == [3]
    assert sp.logit_bias == {5: 1.0} and sp.top_k == 0


def test_verify_catches_changes_after_construction() -> None:
    sp = SamplingParams()
    sp.verify()  # idempotent on a valid object
    for field, value in [("n", 0), ("min_p", 3), ("seed", 2**70), ("bad_words", [1])]:
        changed = sp.clone()
        setattr(changed, field, value)
        with pytest.raises(ValueError, match=rf"^{field}\b"):
            changed.verify()


def test_a_single_stop_string_and_word_lists_are_kept() -> None:
    sp = SamplingParams(stop="end", bad_words=["foo", "bar baz"])
    assert sp.stop == ["end"] and sp.bad_words == ["foo", "bar baz"]
