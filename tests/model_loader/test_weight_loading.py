"""Checkpoint formats (sharded safetensors, .bin), dummy weights and loader errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from harness import PagedHarness, load_model
from safetensors.torch import load_file, save_file
from tiny_configs import hf_logits, save_tiny, save_tiny_bin, tiny_configs

from pagedllm.model_loader import get_model_class

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]


def _assert_matches_hf(path: Path, hf_model: torch.nn.Module, **kwargs: object) -> None:
    model, model_config = load_model(str(path), **kwargs)
    (logits,) = PagedHarness(model, model_config).prompt_logits([PROMPT])
    torch.testing.assert_close(logits, hf_logits(hf_model, PROMPT), atol=1e-4, rtol=1e-4)


def test_sharded_safetensors(tmp_path: Path) -> None:
    hf_model = save_tiny(tiny_configs()["qwen2"], tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    _assert_matches_hf(tmp_path, hf_model)


def test_pytorch_bin(tmp_path: Path) -> None:
    hf_model = save_tiny_bin(tiny_configs()["gpt2"], tmp_path)
    assert not list(tmp_path.glob("*.safetensors")) and list(tmp_path.glob("*.bin"))
    _assert_matches_hf(tmp_path, hf_model)
    _assert_matches_hf(tmp_path, hf_model, load_format="pt")


def test_opt_checkpoint_without_model_prefix(tmp_path: Path) -> None:
    hf_model = save_tiny(tiny_configs()["opt"], tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file(
        {k.removeprefix("model."): v for k, v in state.items()}, tmp_path / "model.safetensors"
    )
    _assert_matches_hf(tmp_path, hf_model)


def test_dummy_weights_have_real_shapes_and_finite_outputs(tmp_path: Path) -> None:
    save_tiny(tiny_configs()["llama"], tmp_path)
    real, _ = load_model(str(tmp_path))
    dummy, model_config = load_model(str(tmp_path), load_format="dummy", dtype="bfloat16")
    real_shapes = {n: p.shape for n, p in real.named_parameters()}
    assert {n: p.shape for n, p in dummy.named_parameters()} == real_shapes
    assert all(p.dtype == torch.bfloat16 for p in dummy.parameters())
    assert float(dummy.model.layers[0].self_attn.qkv_proj.weight.abs().max()) <= 1e-3
    assert torch.allclose(dummy.model.norm.weight.float(), torch.ones(64), atol=2e-3)
    (logits,) = PagedHarness(dummy, model_config).prompt_logits([PROMPT])
    assert torch.isfinite(logits).all()


def test_dummy_needs_no_weight_files(tmp_path: Path) -> None:
    tiny_configs()["gpt2"].save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), load_format="dummy")
    assert model.transformer.wte.weight.shape == (512, 64)
    with pytest.raises(ValueError, match="no weights"):
        load_model(str(tmp_path))


def test_missing_tensor_is_a_clear_error(tmp_path: Path) -> None:
    save_tiny(tiny_configs()["llama"], tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"does not cover 1 parameter.*layers\.1\.mlp\.down_proj"):
        load_model(str(tmp_path))


def test_unknown_architecture(tmp_path: Path) -> None:
    save_tiny(tiny_configs()["llama"], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "architectures": ["FancyNewForCausalLM"]})
    )
    with pytest.raises(
        ValueError, match="FancyNewForCausalLM.*supported architectures:.*LlamaForCausalLM"
    ):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="not supported"):
        get_model_class("FancyNewForCausalLM")
