"""trust_remote_code reaches the config and the tokenizer: a local model directory whose
config class and tokenizer class are its own code (`auto_map` -> configuration_*.py,
tokenization_*.py) loads with the flag, and without it fails with one ValueError that
names the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_configs import hf_greedy, save_tiny, tiny_configs

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.word_model import build_word_tokenizer
from pagedllm.config import EngineArgs
from pagedllm.model_loader.tokenizer import get_tokenizer

_CONFIG_CODE = """
from transformers import LlamaConfig


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny_custom_llama"
"""
_TOKENIZER_CODE = """
from transformers import PreTrainedTokenizerFast


class TinyCustomTokenizer(PreTrainedTokenizerFast):
    custom_marker = "tiny-custom"
"""


def _edit_json(path: Path, **updates: object) -> None:
    data = json.loads(path.read_text())
    data.update(updates)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("tiny_custom")
    hf_model = save_tiny(tiny_configs()["llama"], path)
    (path / "configuration_tiny_custom.py").write_text(_CONFIG_CODE)
    (path / "tokenization_tiny_custom.py").write_text(_TOKENIZER_CODE)
    _edit_json(
        path / "config.json",
        model_type="tiny_custom_llama",
        auto_map={"AutoConfig": "configuration_tiny_custom.TinyCustomConfig"},
    )
    build_word_tokenizer(512).save_pretrained(path)  # type: ignore[attr-defined]
    tok_config = path / "tokenizer_config.json"
    data = json.loads(tok_config.read_text())
    data.pop("backend", None)
    data["tokenizer_class"] = "TinyCustomTokenizer"
    data["auto_map"] = {"AutoTokenizer": [None, "tokenization_tiny_custom.TinyCustomTokenizer"]}
    tok_config.write_text(json.dumps(data))
    return path, hf_model


def test_config_without_the_flag_names_it(custom_model: tuple[Path, object]) -> None:
    path, _ = custom_model
    with pytest.raises(ValueError, match="trust_remote_code=True.*--trust-remote-code"):
        EngineArgs(model=str(path), device="cpu").create_engine_config()


def test_tokenizer_without_the_flag_names_it(custom_model: tuple[Path, object]) -> None:
    path, _ = custom_model
    with pytest.raises(ValueError, match="tokenizer needs its own code.*trust_remote_code=True"):
        get_tokenizer(str(path))


def test_config_class_is_the_models_own(custom_model: tuple[Path, object]) -> None:
    path, _ = custom_model
    config = EngineArgs(
        model=str(path), device="cpu", trust_remote_code=True
    ).create_engine_config()
    hf_config = config.model_config.hf_config
    assert type(hf_config).__name__ == "TinyCustomConfig"
    assert type(hf_config).__module__.startswith("transformers_modules")
    assert config.model_config.trust_remote_code


def test_llm_with_the_flag_runs_the_custom_model(custom_model: tuple[Path, object]) -> None:
    path, hf_model = custom_model
    llm = LLM(model=str(path), device="cpu", dtype="float32", trust_remote_code=True)
    tokenizer = llm.get_tokenizer()
    assert getattr(tokenizer, "custom_marker", None) == "tiny-custom"
    prompt = "t5 t17 t200 t3 t99"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    out = llm.generate([prompt], sp, use_tqdm=False)[0].outputs[0]
    llm.shutdown()
    assert list(out.token_ids) == hf_greedy(hf_model, ids, 8)  # type: ignore[arg-type]
    assert out.text.strip() == tokenizer.decode(out.token_ids)


def test_engine_core_process_unpickles_the_custom_config(
    custom_model: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `pagedllm serve --trust-remote-code` runs it: the config (of a class from the
    model's own code) travels pickled to the engine core's fresh interpreter."""
    path, hf_model = custom_model
    monkeypatch.setenv("PAGEDLLM_ENABLE_MULTIPROCESSING", "1")
    llm = LLM(
        model=str(path),
        device="cpu",
        dtype="float32",
        trust_remote_code=True,
        skip_tokenizer_init=True,
    )
    sp = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, detokenize=False)
    out = llm.generate([{"prompt_token_ids": [5, 17, 200]}], sp, use_tqdm=False)
    llm.shutdown()
    assert list(out[0].outputs[0].token_ids) == hf_greedy(hf_model, [5, 17, 200], 4)  # type: ignore[arg-type]
