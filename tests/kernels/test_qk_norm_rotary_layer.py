"""QKNormRotary's kernel path (forward_cuda, run by the interpreter on CPU tensors) against
its native path, on strided q/k views of a fused qkv row as the attention modules pass."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close

from pagedllm.layers.layernorm import RMSNorm
from pagedllm.layers.qk_norm_rotary import QKNormRotary
from pagedllm.layers.rotary import RotaryEmbedding


@pytest.mark.parametrize("num_q,num_k", [(4, 2), (6, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_path_equals_native_path(num_q: int, num_k: int, dtype: torch.dtype) -> None:
    head_dim, num_tokens = 32, 5
    gen = torch.Generator().manual_seed(num_q * 10 + num_k)
    norms = [RMSNorm(head_dim, 1e-6).to(dtype) for _ in range(2)]
    for norm in norms:
        norm.weight.data.copy_(1 + 0.2 * torch.randn(head_dim, generator=gen))
    rope = RotaryEmbedding(head_dim, head_dim, 512, 1e6, True)
    layer = QKNormRotary(norms[0], norms[1], rope, head_dim)
    assert layer.fusable
    q_size, k_size = num_q * head_dim, num_k * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * k_size, generator=gen).to(dtype)
    pos = torch.randint(0, 512, (num_tokens,), generator=gen)
    ref = qkv.clone()
    want_q, want_k = layer.forward_native(pos, ref[:, :q_size], ref[:, q_size : q_size + k_size])
    v_before = qkv[:, q_size + k_size :].clone()
    q, k = layer.forward_cuda(pos, qkv[:, :q_size], qkv[:, q_size : q_size + k_size])
    assert_close(q, want_q, dtype)
    assert_close(k, want_k, dtype)
    # In place: the qkv buffer holds the result, v untouched.
    assert torch.equal(qkv[:, :q_size], q) and torch.equal(qkv[:, q_size + k_size :], v_before)
