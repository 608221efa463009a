"""The fused Gumbel-max sampler draws from softmax(logits / T): chi-square test
against the exact distribution, rows independent, masked tokens never drawn."""

from __future__ import annotations

import pytest
import torch

from pagedllm.layers.triton_gumbel_sample import gumbel_sample, gumbel_sample_ref

# Critical chi-square values at p = 0.001, by degrees of freedom.
CHI2_CRIT_P001 = {
    1: 10.83,
    2: 13.82,
    3: 16.27,
    4: 18.47,
    5: 20.52,
    6: 22.46,
    7: 24.32,
    8: 26.12,
    9: 27.88,
    10: 29.59,
    11: 31.26,
    12: 32.91,
    13: 34.53,
    14: 36.12,
    15: 37.70,
}


def chi_square_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    """Pearson's test at p = 0.001; bins expecting fewer than 5 draws are pooled
    (the chi-square approximation needs it)."""
    expected = probs.double() * counts.sum()
    order = torch.argsort(expected)
    small = order[expected[order].cumsum(0) < 5]
    keep = torch.ones_like(expected, dtype=torch.bool)
    keep[small] = False
    obs = torch.cat([counts.double()[keep], counts.double()[small].sum().reshape(1)])
    exp = torch.cat([expected[keep], expected[small].sum().reshape(1)])
    if small.numel() == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum())
    return stat < CHI2_CRIT_P001[len(obs) - 1]


@pytest.mark.parametrize("vocab,temperature", [(8, 1.0), (16, 0.5)])
def test_distribution_matches_softmax(vocab: int, temperature: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(vocab) * 1.5
    rows = 1000
    batch = logits.expand(rows, vocab).contiguous()
    temp = torch.full((rows,), temperature)
    tokens = gumbel_sample(batch, temp, seed=1234)
    counts = torch.bincount(tokens, minlength=vocab).float()
    probs = torch.softmax(logits / temperature, dim=-1)
    assert chi_square_ok(counts, probs)
    ref = gumbel_sample_ref(batch, temp, torch.Generator().manual_seed(0))
    ref_counts = torch.bincount(ref, minlength=vocab).float()
    assert chi_square_ok(ref_counts, probs)


def test_masked_tokens_never_drawn_and_seed_is_deterministic() -> None:
    logits = torch.randn(64, 300)
    logits[:, 100:] = float("-inf")
    temp = torch.full((64,), 2.0)
    a = gumbel_sample(logits, temp, seed=7)
    assert int(a.max()) < 100
    assert torch.equal(a, gumbel_sample(logits, temp, seed=7))
    assert not torch.equal(a, gumbel_sample(logits, temp, seed=8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_large_vocab_distribution() -> None:
    vocab = 16
    logits = torch.randn(vocab, device="cuda")
    big = torch.full(
        (20_000, 151936 // 1024 * 1024), float("-inf"), device="cuda", dtype=torch.bfloat16
    )
    big[:, :vocab] = logits.to(torch.bfloat16)
    tokens = gumbel_sample(big[:, :], torch.ones(20_000, device="cuda"), seed=3)
    counts = torch.bincount(tokens, minlength=vocab).float().cpu()
    probs = torch.softmax(logits.to(torch.bfloat16).float(), dim=-1).cpu()
    assert int(tokens.max()) < vocab
    assert chi_square_ok(counts, probs)
