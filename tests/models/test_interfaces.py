"""The model contract (models/interfaces.py) against real model classes: what
check_model accepts for generation, pooling and pipeline stages."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, OPTConfig, Qwen3Config

from pagedllm.models.bert import BertEmbeddingModel
from pagedllm.models.interfaces import check_model, is_causal_lm, supports_pp
from pagedllm.models.llama import Qwen3ForCausalLM
from pagedllm.models.opt import OPTForCausalLM

_SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)


def test_decoder_is_a_causal_lm_with_pipeline_stages() -> None:
    model = Qwen3ForCausalLM(
        Qwen3Config(**_SMALL, num_key_value_heads=2, intermediate_size=64, head_dim=16)
    )
    assert is_causal_lm(model) and supports_pp(model)
    assert check_model(model, generate=True, pipeline=True) is model


def test_bert_pools_but_cannot_generate() -> None:
    model = BertEmbeddingModel(BertConfig(**_SMALL, intermediate_size=64))
    assert check_model(model, generate=False, pipeline=False) is model
    with pytest.raises(TypeError, match="compute_logits"):
        check_model(model, generate=True, pipeline=False)


def test_model_without_pipeline_support_is_refused_for_stages() -> None:
    model = OPTForCausalLM(OPTConfig(**_SMALL, ffn_dim=64, word_embed_proj_dim=32))
    assert check_model(model, generate=True, pipeline=False) is model
    with pytest.raises(TypeError, match="pipeline"):
        check_model(model, generate=True, pipeline=True)


def test_not_a_pagedllm_model() -> None:
    with pytest.raises(TypeError, match="load_weights"):
        check_model(torch.nn.Linear(2, 2), generate=False, pipeline=False)
