"""The oneDNN packed linear path agrees with F.linear and follows weight changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.layers.cpu_linear import linear


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.0)])
@pytest.mark.parametrize("tokens", [1, 7, 64])
def test_matches_f_linear(dtype: torch.dtype, tol: float, tokens: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(96, 48, dtype=dtype)
    b = torch.randn(96, dtype=dtype)
    x = torch.randn(tokens, 48, dtype=dtype)
    with torch.no_grad():
        ref = F.linear(x, w, b).float()
        got = linear(x, w, b).float()
        assert torch.allclose(got, ref, rtol=tol, atol=tol * ref.abs().max().item())
        w.mul_(2.0)  # a weight update (as loading does) must not reuse the stale packing
        assert torch.allclose(
            linear(x, w, b).float(), F.linear(x, w, b).float(), rtol=1e-2, atol=1e-2
        )


def test_autograd_keeps_the_plain_path() -> None:
    w = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(3, 4)
    linear(x, w).sum().backward()
    assert w.grad is not None
