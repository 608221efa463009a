"""The quantization framework with a test method (int8, per-output-channel scales):
detection from the checkpoint, weight creation through the method, fused q/k/v and
gate/up loading of per-channel and per-tensor scales, skipped modules, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from harness import PagedHarness, load_model
from quant_checkpoint import write_quantized
from torch import nn

from pagedllm.config import EngineArgs
from pagedllm.layers.linear import LinearBase
from pagedllm.layers.quantization import (
    QUANTIZATION_METHODS,
    get_quantization_config,
    register_quantization_config,
)
from pagedllm.layers.quantization.base_config import (
    LinearMethodBase,
    QuantizationConfig,
    is_layer_skipped,
    set_weight_attrs,
)

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]


class Int8Method(LinearMethodBase):
    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
    ) -> None:
        out = sum(output_partition_sizes)
        qweight = nn.Parameter(
            torch.empty(out, input_size_per_partition, dtype=torch.int8), requires_grad=False
        )
        set_weight_attrs(qweight, {"output_dim": 0, "input_dim": 1})
        scale = nn.Parameter(torch.empty(out, dtype=torch.float32), requires_grad=False)
        set_weight_attrs(scale, {"output_dim": 0, "broadcast_scalar": True})
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("weight_scale", scale)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        weight = layer.qweight.float() * layer.weight_scale[:, None]
        return nn.functional.linear(x, weight.to(x.dtype), bias)


class Int8Config(QuantizationConfig):
    def __init__(self, skipped: list[str]) -> None:
        self.skipped = skipped

    @classmethod
    def get_name(cls) -> str:
        return "test_int8"

    @classmethod
    def from_config(cls, hf_quant_config: dict[str, Any]) -> Int8Config:
        return cls(hf_quant_config.get("modules_to_not_convert") or [])

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.float32]

    def get_quant_method(self, layer: nn.Module, prefix: str) -> LinearMethodBase | None:
        return None if is_layer_skipped(prefix, self.skipped) else Int8Method()


register_quantization_config("test_int8", f"{__name__}:Int8Config")


def _pack_per_channel(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    scale = weight.abs().amax(dim=1) / 127
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"qweight": q, "weight_scale": scale}, q.float() * scale[:, None]


def _pack_per_tensor(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    scale = weight.abs().amax() / 127
    q = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
    return {"qweight": q, "weight_scale": scale.reshape(())}, q.float() * scale


def _logits(path: Path, **kwargs: Any) -> torch.Tensor:
    model, model_config = load_model(str(path), **kwargs)
    (logits,) = PagedHarness(model, model_config).prompt_logits([PROMPT])
    return logits


@pytest.mark.parametrize("packer", [_pack_per_channel, _pack_per_tensor])
def test_quantized_checkpoint_matches_dequantized(tmp_path: Path, packer: Any) -> None:
    quant, ref = write_quantized(tmp_path, packer, {"quant_method": "test_int8"})
    model, _ = load_model(str(quant))
    assert model.model.layers[0].self_attn.qkv_proj.qweight.dtype == torch.int8
    torch.testing.assert_close(_logits(quant), _logits(ref), atol=1e-4, rtol=1e-4)


def test_modules_to_not_convert_stay_float(tmp_path: Path) -> None:
    config = {"quant_method": "test_int8", "modules_to_not_convert": ["down_proj"]}
    quant, ref = write_quantized(tmp_path, _pack_per_channel, config, skip=("down_proj",))
    model, _ = load_model(str(quant))
    down = model.model.layers[1].mlp.down_proj
    assert isinstance(down, LinearBase) and not down.is_quantized
    assert down.weight.dtype == torch.float32
    torch.testing.assert_close(_logits(quant), _logits(ref), atol=1e-4, rtol=1e-4)


def test_detection_and_mismatch_errors(tmp_path: Path) -> None:
    quant, ref = write_quantized(tmp_path, _pack_per_channel, {"quant_method": "test_int8"})
    detected = EngineArgs(model=str(quant), device="cpu").create_engine_config()
    assert detected.model_config.quantization == "test_int8"
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        EngineArgs(model=str(quant), device="cpu", quantization="gguf").create_engine_config()
    with pytest.raises(ValueError, match="needs a checkpoint quantized with"):
        EngineArgs(model=str(ref), device="cpu", quantization="test_int8").create_engine_config()
    with pytest.raises(ValueError, match="quantization must be one of"):
        EngineArgs(model=str(ref), quantization="int3").create_engine_config()
    with pytest.raises(ValueError, match="is not supported by quantization"):
        load_model(str(quant), dtype="bfloat16")


def test_registry() -> None:
    assert {"awq", "gptq", "squeezellm", "fp8", "gguf"} <= set(QUANTIZATION_METHODS)
    assert get_quantization_config("test_int8") is Int8Config
    with pytest.raises(ValueError, match="quantization must be one of"):
        get_quantization_config("int3")


def test_dummy_weights_fill_packed_parameters(tmp_path: Path) -> None:
    quant, _ = write_quantized(tmp_path, _pack_per_channel, {"quant_method": "test_int8"})
    model, model_config = load_model(str(quant), load_format="dummy")
    qweight = model.model.layers[0].mlp.gate_up_proj.qweight
    assert qweight.dtype == torch.int8 and int(qweight.abs().max()) > 64
    (logits,) = PagedHarness(model, model_config).prompt_logits([PROMPT])
    assert torch.isfinite(logits).all()
