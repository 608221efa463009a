"""Tiny quantized HF checkpoints for tests: a random Llama whose linear weights go
through a test packer, saved twice: packed (with `quantization_config`) and with the
packer's dequantized float32 weights (the reference)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_configs import make_hf_model, tiny_configs

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# W [out, in] float32 -> (checkpoint tensors by suffix, dequantized W [out, in] float32)
Packer = Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def write_quantized(
    path: Path,
    packer: Packer,
    quant_config: dict[str, object],
    skip: tuple[str, ...] = (),
    config_name: str = "llama",
    **config_overrides: object,
) -> tuple[Path, Path]:
    """(packed checkpoint dir, dequantized float32 checkpoint dir). Linear layers whose
    name contains an entry of `skip` stay float in both."""
    config = tiny_configs()[config_name]
    for key, value in config_overrides.items():
        setattr(config, key, value)
    model = make_hf_model(config)
    state = model.state_dict()
    packed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        module = name.removesuffix(".weight")
        is_linear = name.endswith(".weight") and module.split(".")[-1] in LINEARS
        if not is_linear or any(s in name for s in skip):
            packed[name] = tensor.contiguous()
            continue
        tensors, dequantized = packer(tensor.float())
        for suffix, value in tensors.items():
            packed[f"{module}.{suffix}"] = value.contiguous()
        state[name].copy_(dequantized)
    float_dir, quant_dir = path / "float", path / "quant"
    model.save_pretrained(float_dir)
    model.save_pretrained(quant_dir)
    for stale in quant_dir.glob("*.safetensors*"):
        stale.unlink()
    save_file(packed, quant_dir / "model.safetensors")
    raw = json.loads((quant_dir / "config.json").read_text())
    raw["quantization_config"] = quant_config
    (quant_dir / "config.json").write_text(json.dumps(raw))
    return quant_dir, float_dir
