"""Admission checks (engine/validation.py): each failure is an InvalidRequestError, a
ValueError that names the request field (`param`), with the server's wording where
clients match on it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pagedllm.engine import validation
from pagedllm.exceptions import InvalidRequestError
from pagedllm.sampling_params import PoolingParams, SamplingParams

VOCAB = 8
HIDDEN = 8
BERT = SimpleNamespace(model_type="bert", hidden_size=HIDDEN)


def _param_of(call: Any, *args: Any) -> str | None:
    with pytest.raises(InvalidRequestError) as info:
        call(*args)
    assert isinstance(info.value, ValueError)
    return info.value.param


def test_token_ids_outside_the_vocabulary() -> None:
    validation.check_token_ids([0, VOCAB - 1], VOCAB, "prompt")
    for bad in (VOCAB, -1, 2**40, "3", True, 1.0):
        assert _param_of(validation.check_token_ids, [1, bad], VOCAB, "prompt") == "prompt"
        # the C-speed check of a long list finds the one bad id at its end too
        long_list = [1] * 4096 + [bad]
        assert _param_of(validation.check_token_ids, long_list, VOCAB, "prompt") == "prompt"
    with pytest.raises(ValueError, match=r"^tokens contains token id 8 outside the vocabulary"):
        validation.check_token_ids([8], VOCAB, "tokens")


def test_sampling_token_ids_name_their_field() -> None:
    validation.verify_token_ids(SamplingParams(logit_bias={7: 1.0}, allowed_token_ids=[0, 7]), 8)
    cases = [
        (SamplingParams(logit_bias={8: 1.0}), "logit_bias"),
        (SamplingParams(allowed_token_ids=[1, 99]), "allowed_token_ids"),
        (SamplingParams(allowed_token_ids=[]), "allowed_token_ids"),
        (SamplingParams(stop_token_ids=[8]), "stop_token_ids"),
    ]
    for params, field in cases:
        assert _param_of(validation.verify_token_ids, params, VOCAB) == field


def test_prompt_length_leaves_room_for_one_token_unless_pooling() -> None:
    validation.check_prompt_length(63, 64, pooling=False)
    validation.check_prompt_length(64, 64, pooling=True)
    with pytest.raises(InvalidRequestError) as info:
        validation.check_prompt_length(64, 64, pooling=False)
    assert str(info.value) == (
        "This model's maximum context length is 64 tokens. However, your request has 64 "
        "input tokens. Please reduce the length of the input."
    )
    assert info.value.param == "prompt"
    assert _param_of(validation.check_prompt_length, 65, 64, True) == "prompt"
    with pytest.raises(InvalidRequestError, match="empty"):
        validation.check_prompt_length(0, 64, pooling=True)


def test_max_tokens_strict_for_the_servers_capped_offline() -> None:
    assert validation.resolve_max_tokens(None, 10, 64, strict=True) == 54
    assert validation.resolve_max_tokens(54, 10, 64, strict=True) == 54
    assert validation.resolve_max_tokens(100, 10, 64, strict=False) == 54
    with pytest.raises(InvalidRequestError) as info:
        validation.resolve_max_tokens(55, 10, 64, strict=True)
    assert str(info.value) == (
        "'max_tokens' or 'max_completion_tokens' is too large: 55. This model's maximum "
        "context length is 64 tokens and your request has 10 input tokens (55 > 64 - 10)."
    )
    assert info.value.param == "max_tokens"


def test_dimensions_refused_for_a_model_without_matryoshka() -> None:
    validation.verify_pooling_params(PoolingParams(), BERT, "m")  # no dimensions: fine
    with pytest.raises(ValueError, match='Model "m" does not support matryoshka'):
        validation.verify_pooling_params(PoolingParams(dimensions=4), BERT, "m")


def test_dimensions_with_is_matryoshka() -> None:
    config = SimpleNamespace(model_type="bert", hidden_size=HIDDEN, is_matryoshka=True)
    validation.verify_pooling_params(PoolingParams(dimensions=3), config, "m")
    too_wide = PoolingParams(dimensions=HIDDEN + 1)
    assert _param_of(validation.verify_pooling_params, too_wide, config, "m") == "dimensions"
    with pytest.raises(ValueError, match="at most the model's hidden size"):
        validation.verify_pooling_params(too_wide, config, "m")


def test_dimensions_must_be_one_of_matryoshka_dimensions() -> None:
    config = SimpleNamespace(model_type="bert", hidden_size=HIDDEN, matryoshka_dimensions=[2, 4])
    validation.verify_pooling_params(PoolingParams(dimensions=4), config, "m")
    with pytest.raises(ValueError, match=r"only supports \[2, 4\] matryoshka dimensions"):
        validation.verify_pooling_params(PoolingParams(dimensions=3), config, "m")


def test_sampling_params_errors_name_their_field() -> None:
    assert _param_of(SamplingParams, 1, None, 0.0, 0.0, 1.0, -1.0) == "temperature"
    assert _param_of(lambda: SamplingParams(logit_bias={"x": 1.0})) == "logit_bias"
    assert _param_of(lambda: SamplingParams(max_tokens=0)) == "max_tokens"
