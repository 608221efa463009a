"""The Transformers fallback (models/transformers.py): architectures without a native
implementation run through HF's modeling code on the paged KV cache, token for token
as HF; model_impl chooses between native and fallback; the rest is a clear error."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from harness import PagedHarness, load_model
from tiny_configs import hf_greedy, hf_logits, save_tiny, tiny_configs
from transformers import GPTNeoXConfig, PretrainedConfig, Starcoder2Config

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs
from pagedllm.models.transformers import TransformersForCausalLM

_SMALL = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    initializer_range=0.1,
    bos_token_id=1,
    eos_token_id=2,
)
FALLBACK_CONFIGS: dict[str, PretrainedConfig] = {
    # Partial rotary (a quarter of the head), fused query_key_value, parallel residual.
    "gpt_neox": GPTNeoXConfig(**_SMALL, tie_word_embeddings=False),
    # Grouped-query attention, LayerNorm and biases everywhere, tied embeddings.
    "starcoder2": Starcoder2Config(**_SMALL, num_key_value_heads=2, sliding_window=None),
}
PROMPTS = [
    [5, 17, 200, 3, 99, 41, 7],
    [300, 2, 8],
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
]
MAX_TOKENS = 12


@pytest.fixture(scope="module", params=sorted(FALLBACK_CONFIGS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path: Path = tmp_path_factory.mktemp(request.param)
    hf_model = save_tiny(FALLBACK_CONFIGS[request.param], path)
    model, model_config = load_model(str(path))
    return hf_model, model, model_config, path


def test_fallback_is_chosen_automatically(pair) -> None:
    _, model, model_config, _ = pair
    assert model_config.model_impl == "transformers"
    assert isinstance(model, TransformersForCausalLM)


def test_prefill_logits_match_hf(pair) -> None:
    hf_model, model, model_config, _ = pair
    ours = PagedHarness(model, model_config).prompt_logits(PROMPTS)
    for prompt, logits in zip(PROMPTS, ours):
        torch.testing.assert_close(logits, hf_logits(hf_model, prompt), atol=1e-4, rtol=1e-4)


def test_chunked_greedy_decode_matches_hf(pair) -> None:
    hf_model, model, model_config, _ = pair
    harness = PagedHarness(model, model_config, block_size=2, seed=1)
    ours = harness.greedy(PROMPTS, MAX_TOKENS, chunk=3)
    assert ours == [hf_greedy(hf_model, prompt, MAX_TOKENS) for prompt in PROMPTS]


def test_engine_with_prefix_caching_matches_hf(pair, caplog: pytest.LogCaptureFixture) -> None:
    """The whole engine: continuous batching, chunked prefill (a small token budget) and
    prefix caching (the same prompts twice, sharing a 16-token prefix)."""
    hf_model, _, _, path = pair
    prefix = list(range(30, 46))
    prompts = [prefix + p for p in PROMPTS]
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        llm = LLM(
            model=str(path),
            device="cpu",
            dtype="float32",
            block_size=4,
            enable_prefix_caching=True,
            max_num_batched_tokens=16,
            max_model_len=128,
        )
    assert "Transformers fallback" in caplog.text
    assert llm.llm_engine.engine_config.enforce_eager  # no CUDA graphs for HF's code
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    expected = [hf_greedy(hf_model, p, 8) for p in prompts]
    for _ in range(2):  # the second round reads the cached prefix blocks
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected


def test_server_runs_the_fallback(tmp_path: Path) -> None:
    """A real uvicorn server and the openai client on a fallback architecture."""
    import openai

    sys.path.insert(0, str(Path(__file__).parents[1] / "entrypoints"))
    from remote_server import RemoteServer

    from pagedllm.model_loader.resolve import _SMOLLM2_PACKAGE, _packaged_model_path
    from pagedllm.model_loader.tokenizer import get_tokenizer

    gguf = _packaged_model_path(*_SMOLLM2_PACKAGE)  # the embedded model's tokenizer
    tokenizer = get_tokenizer(gguf)
    config = GPTNeoXConfig(**{**_SMALL, "vocab_size": len(tokenizer)})
    hf_model = save_tiny(config, tmp_path)
    prompt = tokenizer.encode("The capital of France is")
    expected = tokenizer.decode(hf_greedy(hf_model, prompt, 6))
    flags = ["--model", str(tmp_path), "--tokenizer", gguf, "--served-model-name", "neox"]
    flags += ["--max-model-len", "128", "--kv-cache-memory-bytes", "16M", "--dtype", "float32"]
    server = RemoteServer("pagedllm.entrypoints.openai.api_server", flags)
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=server.url("/v1"), api_key="none")
        out = client.completions.create(
            model="neox",
            prompt=prompt,
            max_tokens=6,
            temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        assert out.choices[0].text == expected
        assert "Transformers fallback" in server.log_tail(100_000)
    finally:
        server.stop()


def test_llama_through_transformers_matches_native(tmp_path: Path) -> None:
    save_tiny(tiny_configs()["llama"], tmp_path)
    native, native_config = load_model(str(tmp_path))
    fallback, fallback_config = load_model(str(tmp_path), model_impl="transformers")
    assert native_config.model_impl == "pagedllm" and not isinstance(
        native, TransformersForCausalLM
    )
    assert isinstance(fallback, TransformersForCausalLM)
    want = PagedHarness(native, native_config).greedy(PROMPTS, MAX_TOKENS)
    got = PagedHarness(fallback, fallback_config, block_size=2).greedy(PROMPTS, MAX_TOKENS, 3)
    assert got == want


def test_vllm_is_an_alias_of_the_native_implementation(tmp_path: Path) -> None:
    save_tiny(tiny_configs()["llama"], tmp_path)
    _, model_config = load_model(str(tmp_path), model_impl="vllm")
    assert model_config.model_impl == "pagedllm"
    path = tmp_path / "neox"
    FALLBACK_CONFIGS["gpt_neox"].save_pretrained(path)  # no `architectures`: from model_type
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM.*model_impl='transformers'"):
        load_model(str(path), load_format="dummy", model_impl="pagedllm")


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "NoSuchModelForCausalLM"])
def test_unsupported_architecture_names_it_and_the_fallback(arch: str, tmp_path: Path) -> None:
    from transformers import BertConfig

    config = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4)
    config.architectures = [arch]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"{arch}.*Transformers fallback"):
        load_model(str(tmp_path), load_format="dummy")


def test_model_impl_flag() -> None:
    from pagedllm.entrypoints.cli_args import make_server_parser

    parser = make_server_parser()
    assert parser.parse_args(["--model-impl", "transformers"]).model_impl == "transformers"
    with pytest.raises(ValueError, match="model_impl"):
        EngineArgs(model_impl="hf").validate()


def test_fallback_refuses_parallelism(tmp_path: Path) -> None:
    FALLBACK_CONFIGS["gpt_neox"].save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Transformers fallback.*tensor"):
        load_model(str(tmp_path), load_format="dummy", tensor_parallel_size=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fallback_on_the_gpu_matches_hf(tmp_path: Path) -> None:
    """The GPU path (Triton attention backend, eager): tokens as HF's in float32."""
    hf_model = save_tiny(FALLBACK_CONFIGS["gpt_neox"], tmp_path)
    llm = LLM(
        model=str(tmp_path),
        device="cuda",
        dtype="float32",
        block_size=16,
        max_num_batched_tokens=16,
        max_model_len=128,
        gpu_memory_utilization=0.2,
    )
    assert llm.llm_engine.engine_config.enforce_eager  # set by the fallback
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    expected = [hf_greedy(hf_model, p, MAX_TOKENS) for p in PROMPTS]
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected
