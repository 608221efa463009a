"""resolve_model: local directories, GGUF files, packaged aliases, download_dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tiny_configs import save_tiny, save_tiny_bin, tiny_configs

from pagedllm.model_loader import get_tokenizer, resolve_model
from pagedllm.model_loader.resolve import DEFAULT_MODEL_NAME


def test_default_model_is_the_packaged_smollm2_gguf() -> None:
    resolved = resolve_model(None)
    assert resolved.name == DEFAULT_MODEL_NAME == "SmolLM2-135M-Instruct"
    assert resolved.load_format == "gguf"
    assert resolved.path.endswith(".gguf") and resolved.gguf_file == resolved.path
    assert resolved.tokenizer_path == resolved.path
    assert resolved.hf_config.architectures == ["LlamaForCausalLM"]
    assert resolved.hf_config.num_hidden_layers == 30
    assert resolved.checkpoint_dtype is None
    tokenizer = get_tokenizer(resolved.tokenizer_path)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


@pytest.mark.parametrize("alias", ["smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_smollm2_aliases(alias: str) -> None:
    resolved = resolve_model(alias)
    assert resolved.name == alias
    assert resolved.path == resolve_model(None).path


def test_minilm_alias_is_an_hf_directory() -> None:
    resolved = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert os.path.isfile(os.path.join(resolved.path, "config.json"))
    assert resolved.load_format == "safetensors"
    assert resolved.hf_config.architectures == ["BertModel"]
    assert resolve_model("all-minilm-l6-v2").path == resolved.path


def test_directory_with_one_gguf(tmp_path: Path) -> None:
    gguf = resolve_model(None).path
    os.symlink(gguf, tmp_path / "model.gguf")
    resolved = resolve_model(str(tmp_path))
    assert resolved.load_format == "gguf" and resolved.gguf_file == str(tmp_path / "model.gguf")
    os.symlink(gguf, tmp_path / "other.gguf")
    with pytest.raises(ValueError, match="holds 2 .gguf files"):
        resolve_model(str(tmp_path))


def test_hf_directory(tmp_path: Path) -> None:
    save_tiny(tiny_configs()["llama"], tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    resolved = resolve_model(str(tmp_path))
    assert resolved.path == str(tmp_path) and resolved.name == str(tmp_path)
    assert resolved.load_format == "safetensors" and resolved.gguf_file is None
    assert resolved.checkpoint_dtype == torch.float32
    assert resolved.generation_config["eos_token_id"] == [2, 7]
    assert resolve_model(str(tmp_path), load_format="dummy").load_format == "dummy"


def test_load_format_mismatches(tmp_path: Path) -> None:
    save_tiny_bin(tiny_configs()["gpt2"], tmp_path)
    assert resolve_model(str(tmp_path)).load_format == "pt"
    with pytest.raises(ValueError, match="load_format='safetensors'"):
        resolve_model(str(tmp_path), load_format="safetensors")
    with pytest.raises(ValueError, match="not a .gguf file"):
        resolve_model(str(tmp_path), load_format="gguf")
    with pytest.raises(ValueError, match="does not fit the GGUF file"):
        resolve_model(None, load_format="safetensors")


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no config.json and no .gguf"):
        resolve_model(str(tmp_path))


def test_unknown_hub_id_says_there_is_no_network(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no network access"):
        resolve_model("some-org/some-model-that-is-not-here", download_dir=str(tmp_path))


def test_download_dir_layouts(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / "abc123"
    save_tiny(tiny_configs()["gpt2"], snapshot)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    resolved = resolve_model("acme/tiny", download_dir=str(tmp_path))
    assert resolved.path == str(snapshot) and resolved.name == "acme/tiny"
    save_tiny(tiny_configs()["opt"], tmp_path / "acme" / "plain")
    resolved = resolve_model("acme/plain", download_dir=str(tmp_path))
    assert resolved.hf_config.architectures == ["OPTForCausalLM"]
