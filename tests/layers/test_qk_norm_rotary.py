"""QKNormRotary's CPU path against the computation the attention modules inlined before
it (per-head norm on [T, heads, head_dim] views, then the rotary module), and the
attention modules' state-dict names (the layer adds none)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Qwen3Config

from pagedllm.layers.layernorm import RMSNorm
from pagedllm.layers.qk_norm_rotary import QKNormRotary
from pagedllm.layers.rotary import RotaryEmbedding
from pagedllm.models.llama import LlamaAttention

HEAD_DIM, NUM_Q, NUM_K = 32, 4, 2


def _norm(seed: int, dtype: torch.dtype, offset: float = 0.0) -> RMSNorm:
    norm = RMSNorm(HEAD_DIM, 1e-6, weight_offset=offset).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    norm.weight.data.copy_(1 + 0.3 * torch.randn(HEAD_DIM, generator=gen))
    return norm


def _inline(
    q_norm: nn.Module,
    k_norm: nn.Module,
    rope: RotaryEmbedding,
    pos: torch.Tensor,
    qkv: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The code LlamaAttention / GemmaAttention.forward ran before QKNormRotary."""
    q, k, _ = qkv.split([NUM_Q * HEAD_DIM, NUM_K * HEAD_DIM, NUM_K * HEAD_DIM], dim=-1)
    q = q_norm(q.view(q.shape[0], -1, HEAD_DIM)).view(q.shape)
    k = k_norm(k.view(k.shape[0], -1, HEAD_DIM)).view(k.shape)
    return rope(pos, q, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 1.0])  # Qwen3; Gemma 3's (1 + w) norm
@pytest.mark.parametrize("neox", [True, False])
def test_native_path_equals_the_inline_computation(
    dtype: torch.dtype, offset: float, neox: bool
) -> None:
    q_norm, k_norm = _norm(1, dtype, offset), _norm(2, dtype, offset)
    rope = RotaryEmbedding(HEAD_DIM, HEAD_DIM, 256, 1e6, neox)
    layer = QKNormRotary(q_norm, k_norm, rope, HEAD_DIM)
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(6, (NUM_Q + 2 * NUM_K) * HEAD_DIM, generator=gen).to(dtype)
    pos = torch.randint(0, 256, (6,), generator=gen)
    want_q, want_k = _inline(q_norm, k_norm, rope, pos, qkv.clone())
    q, k, _ = qkv.clone().split([NUM_Q * HEAD_DIM, NUM_K * HEAD_DIM, NUM_K * HEAD_DIM], dim=-1)
    got_q, got_k = layer(pos, q, k)  # CPU tensors: the native path
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


def test_fusable_only_for_the_kernels_case() -> None:
    q_norm, k_norm = _norm(1, torch.float32), _norm(2, torch.float32)
    neox = RotaryEmbedding(HEAD_DIM, HEAD_DIM, 64, 1e4, True)
    assert QKNormRotary(q_norm, k_norm, neox, HEAD_DIM).fusable
    gemma = _norm(1, torch.float32, 1.0), _norm(2, torch.float32, 1.0)
    assert not QKNormRotary(*gemma, neox, HEAD_DIM).fusable
    gptj = RotaryEmbedding(HEAD_DIM, HEAD_DIM, 64, 1e4, False)
    assert not QKNormRotary(q_norm, k_norm, gptj, HEAD_DIM).fusable
    partial = RotaryEmbedding(HEAD_DIM, HEAD_DIM // 2, 64, 1e4, True)
    assert not QKNormRotary(q_norm, k_norm, partial, HEAD_DIM).fusable
    odd = RMSNorm(24), RMSNorm(24)
    assert not QKNormRotary(*odd, RotaryEmbedding(24, 24, 64, 1e4), 24).fusable


def test_attention_state_dict_names_unchanged() -> None:
    config = Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    attn = LlamaAttention(config, qkv_bias=False, qk_norm=True)
    names = set(attn.state_dict())
    assert {"q_norm.weight", "k_norm.weight"} <= names
    assert not any("qk_norm_rotary" in n for n in names)
    assert len(list(attn.qk_norm_rotary.parameters())) == 0  # type: ignore[union-attr]
