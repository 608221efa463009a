"""ChatGLM2/3 (model_type "chatglm", the checkpoint's own config code) on GLM's modules.

References: (1) HF transformers' native GLM (`GlmForCausalLM`) with the same weights
before they were renamed and fused into ChatGLM's layout; (2) a torch reference of
ChatGLM2's forward written from the published architecture (chatglm_checkpoint.py),
which must agree with (1) first, so the renaming is shown to keep the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from chatglm_checkpoint import CHATGLM_CONFIG, chatglm_reference_logits, save_tiny_chatglm
from harness import PagedHarness, load_model
from tiny_configs import hf_greedy, hf_logits

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs
from pagedllm.models.chatglm import ChatGLMForCausalLM

PROMPTS = [
    [5, 17, 200, 3, 99, 41, 7],
    [300, 2, 8],
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
]
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def chatglm(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("chatglm")
    hf_glm, state = save_tiny_chatglm(path)
    model, model_config = load_model(str(path), trust_remote_code=True)
    return path, hf_glm, state, model, model_config


def test_reference_chatglm_forward_equals_hf_glm(chatglm) -> None:
    _, hf_glm, state, _, _ = chatglm
    for prompt in PROMPTS:
        expected = hf_logits(hf_glm, prompt)
        got = chatglm_reference_logits(state, CHATGLM_CONFIG, prompt)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_config_from_the_checkpoints_own_code(chatglm) -> None:
    _, _, _, model, model_config = chatglm
    assert type(model_config.hf_config).__module__.startswith("transformers_modules")
    assert isinstance(model, ChatGLMForCausalLM)
    # ChatGLM's names for layers, query groups and head size.
    assert (model_config.num_layers, model_config.num_kv_heads, model_config.head_dim) == (2, 2, 32)
    assert model_config.vocab_size == 512


def test_prefill_logits_match_hf_glm_and_reference(chatglm) -> None:
    _, hf_glm, state, model, model_config = chatglm
    ours = PagedHarness(model, model_config).prompt_logits(PROMPTS)
    for prompt, logits in zip(PROMPTS, ours):
        torch.testing.assert_close(logits, hf_logits(hf_glm, prompt), atol=1e-4, rtol=1e-4)
        reference = chatglm_reference_logits(state, CHATGLM_CONFIG, prompt)
        torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_greedy_decode_matches_hf_glm(chatglm) -> None:
    _, hf_glm, _, model, model_config = chatglm
    ours = PagedHarness(model, model_config, seed=1).greedy(PROMPTS, MAX_TOKENS)
    assert ours == [hf_greedy(hf_glm, prompt, MAX_TOKENS) for prompt in PROMPTS]


def test_chunked_prefill_gives_same_tokens(chatglm) -> None:
    _, hf_glm, _, model, model_config = chatglm
    chunked = PagedHarness(model, model_config, block_size=2, seed=3).greedy(
        PROMPTS, MAX_TOKENS, chunk=3
    )
    assert chunked == [hf_greedy(hf_glm, prompt, MAX_TOKENS) for prompt in PROMPTS]


def test_llm_runs_chatglm_with_trust_remote_code(chatglm) -> None:
    path, hf_glm, _, _, _ = chatglm
    llm = LLM(
        model=str(path),
        device="cpu",
        dtype="float32",
        trust_remote_code=True,
        skip_tokenizer_init=True,
    )
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    llm.shutdown()
    assert [list(o.outputs[0].token_ids) for o in outs] == [
        hf_greedy(hf_glm, p, 12) for p in PROMPTS
    ]


def test_without_trust_remote_code_names_the_flag(chatglm) -> None:
    path = chatglm[0]
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        EngineArgs(model=str(path), device="cpu").create_engine_config()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"padded_vocab_size": None, "vocab_size": 512}, "first ChatGLM"),
        ({"multi_query_attention": False}, "multi_query_attention=False"),
        ({"quantization_bit": 4}, "quantization_bit"),
    ],
)
def test_unsupported_chatglm_variants_are_refused(tmp_path: Path, edit: dict, message: str) -> None:
    save_tiny_chatglm(tmp_path)
    config = {**json.loads((tmp_path / "config.json").read_text()), **edit}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_model(str(tmp_path), trust_remote_code=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("enforce_eager", [True, False])
def test_chatglm_on_cuda_matches_hf_glm(tmp_path: Path, enforce_eager: bool) -> None:
    hf_glm, _ = save_tiny_chatglm(tmp_path)
    llm = LLM(
        model=str(tmp_path),
        dtype="float32",
        trust_remote_code=True,
        skip_tokenizer_init=True,
        enforce_eager=enforce_eager,
        gpu_memory_utilization=0.2,
    )
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    llm.shutdown()
    assert [list(o.outputs[0].token_ids) for o in outs] == [
        hf_greedy(hf_glm, p, 24) for p in PROMPTS
    ]
