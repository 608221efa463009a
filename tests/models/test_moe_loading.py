"""MoE weight loading beyond save_pretrained's per-expert files: transformers 5's
in-memory stacked experts (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj`
[E, H, I]) load into the same FusedMoE parameters; and the router's top-k."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import PagedHarness, load_model
from tiny_configs import hf_logits, save_tiny, tiny_configs

from pagedllm.layers.fused_moe import select_experts

PROMPT = [5, 17, 200, 3, 99, 41, 7]


@pytest.mark.parametrize("name", ["mixtral", "qwen3-moe"])
def test_stacked_expert_tensors_load(tmp_path: Path, name: str) -> None:
    hf_model = save_tiny(tiny_configs()[name], tmp_path)
    model, model_config = load_model(str(tmp_path))
    state = hf_model.state_dict()
    assert any(k.endswith("experts.gate_up_proj") for k in state)  # the stacked layout
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        loaded = model.load_weights(state.items())
    assert loaded == {n for n, _ in model.named_parameters()}
    logits = PagedHarness(model, model_config).prompt_logits([PROMPT])[0]
    torch.testing.assert_close(logits, hf_logits(hf_model, PROMPT), atol=1e-4, rtol=1e-4)


def test_select_experts_top_k_and_renormalize() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.25, 0.2, 0.1, 0.45]]))
    weights, ids = select_experts(logits, 2, renormalize=False)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert ids.tolist() == [[1, 3], [3, 0]]
    torch.testing.assert_close(weights, torch.tensor([[0.4, 0.3], [0.45, 0.25]]))
    weights, _ = select_experts(logits.to(torch.bfloat16), 2, renormalize=True)
    torch.testing.assert_close(
        weights, torch.tensor([[4 / 7, 3 / 7], [0.45 / 0.7, 0.25 / 0.7]]), atol=1e-2, rtol=1e-2
    )
