"""The fused Gumbel-max sampler draws from softmax(logits / T): chi-square test
against the exact distribution, rows independent, masked tokens never drawn; the
vocabulary split (stage 1 partials, stage 2 reduce) never changes the tokens."""

from __future__ import annotations

import pytest
import torch

from pagedllm.layers.kernels.triton_gumbel_sample import (
    BLOCK_V_CPU,
    BLOCK_V_CUDA,
    TARGET_PROGRAMS,
    choose_num_splits,
    gumbel_sample,
    gumbel_sample_ref,
    reduce_partials,
)

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
    """16 rows, 3 splits (each interpreted program costs ~15 ms; 64 rows before): a bug
    that drew masked tokens at their share of the vocabulary (2/3) would pass 16 rows
    with p ~ 2e-8; two seeds agree on all 16 rows with p < 1e-20."""
    logits = torch.randn(16, 300)
    logits[:, 100:] = float("-inf")
    temp = torch.full((16,), 2.0)
    a = gumbel_sample(logits, temp, seed=7)
    assert int(a.max()) < 100
    assert torch.equal(a, gumbel_sample(logits, temp, seed=7))
    assert not torch.equal(a, gumbel_sample(logits, temp, seed=8))


@pytest.mark.parametrize(
    "n,vocab,dtype",
    [(1, 1000, torch.float32), (3, 2999, torch.bfloat16), (5, 3000, torch.float16)],
)
def test_same_tokens_for_every_split_count(n: int, vocab: int, dtype: torch.dtype) -> None:
    torch.manual_seed(n)
    logits = (torch.randn(n, vocab) * 3).to(dtype)
    logits[:, vocab // 3 : vocab // 2] = float("-inf")
    temp = torch.rand(n) + 0.5
    chunks = -(-vocab // BLOCK_V_CPU)
    seed = 99 * n
    one = gumbel_sample(logits, temp, seed, num_splits=1)
    assert choose_num_splits(n, vocab, BLOCK_V_CPU) == chunks  # None: one chunk a slice
    # 2, 5: uneven slices (5 leaves the last one empty at V = 1000); chunks + 3: empty
    # slices past the end.
    for splits in (2, 5, chunks + 3, None):
        assert torch.equal(gumbel_sample(logits, temp, seed, num_splits=splits), one), splits


def test_strided_rows_across_splits() -> None:
    torch.manual_seed(1)
    wide = torch.randn(4, 1500)
    logits = wide[:, :1200]  # row stride 1500
    temp = torch.full((4,), 0.7)
    one = gumbel_sample(logits.contiguous(), temp, 5, num_splits=1)
    assert torch.equal(gumbel_sample(logits, temp, 5, num_splits=4), one)


@pytest.mark.parametrize("splits", [1, 2, 4, None])
def test_clear_maximum_wins_from_any_split(splits: int | None) -> None:
    """With T = 0.01 a logit 1 above all others beats any Gumbel noise (whose span is
    < 20 after clamping), so the token is known: first, middle and last (partial) chunk."""
    vocab = 1000
    targets = [0, 130, 511, 640, 999]
    torch.manual_seed(2)
    logits = torch.randn(len(targets), vocab)
    for r, t in enumerate(targets):
        logits[r, t] = logits[r].max() + 1.0
    tokens = gumbel_sample(logits, torch.full((len(targets),), 0.01), 3, num_splits=splits)
    assert tokens.tolist() == targets


@pytest.mark.parametrize("splits", [1, 2, 3, 8, None])
def test_exact_ties_resolve_to_smallest_index(splits: int | None) -> None:
    """+inf logits tie exactly (+inf + finite noise = +inf) wherever they are: the
    smallest index wins, also when the tied indices lie in different splits."""
    vocab = 1000
    pairs = [(3, 900), (130, 131), (200, 700), (999, 0)]
    logits = torch.randn(len(pairs), vocab)
    for r, (a, b) in enumerate(pairs):
        logits[r, a] = logits[r, b] = float("inf")
    tokens = gumbel_sample(logits, torch.ones(len(pairs)), 11, num_splits=splits)
    assert tokens.tolist() == [min(p) for p in pairs]


def test_all_masked_row_gives_index_zero_for_every_split_count() -> None:
    logits = torch.full((2, 700), float("-inf"))
    for splits in (1, 3, 6, 9):
        assert gumbel_sample(logits, torch.ones(2), 4, num_splits=splits).tolist() == [0, 0]


def test_reduce_partials_takes_max_then_smallest_index() -> None:
    inf = float("inf")
    part_val = torch.tensor(
        [
            [1.0, 3.0, 2.0, 3.0],  # tie at splits 1 and 3: index 7 < 40
            [5.0, 5.0, 5.0, 5.0],  # four-way tie, indices out of order: 2
            [-inf, -inf, -inf, -inf],  # nothing drawable: smallest index
            [-inf, -inf, 0.5, -inf],
            [inf, 0.0, inf, -1.0],
        ]
    )
    part_idx = torch.tensor(
        [[0, 40, 80, 7], [90, 2, 50, 11], [5, 3, 9, 4], [0, 10, 20, 30], [12, 1, 6, 0]],
        dtype=torch.int32,
    )
    assert reduce_partials(part_val, part_idx, 100).tolist() == [7, 2, 3, 20, 6]
    # Non-power-of-two split counts are masked to the real splits.
    assert reduce_partials(
        part_val[:, :3].contiguous(), part_idx[:, :3].contiguous(), 100
    ).tolist() == [40, 2, 3, 20, 6]


def test_choose_num_splits() -> None:
    for n, vocab in [
        (1, 128256),
        (7, 151936),
        (256, 151936),
        (1, 1000),
        (1, 1),
        (600, 151936),
        (5000, 151936),
    ]:
        s = choose_num_splits(n, vocab)
        chunks = -(-vocab // BLOCK_V_CUDA)
        per = -(-chunks // s)
        assert 1 <= s <= chunks
        assert (s - 1) * per < chunks  # no empty split
        if n >= TARGET_PROGRAMS:
            assert s == 1
    assert choose_num_splits(1, 128256) == 126  # one 1024-chunk a program
    assert choose_num_splits(256, 151936) == 17  # 9 chunks a program
    assert choose_num_splits(TARGET_PROGRAMS, 151936) == 1
    assert choose_num_splits(1, 3000, BLOCK_V_CPU) == 24


def test_num_splits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_splits"):
        gumbel_sample(torch.zeros(1, 10), torch.ones(1), 0, num_splits=0)


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "n,vocab,dtype",
    [(1, 128256, torch.bfloat16), (256, 151936, torch.float32), (3, 151936, torch.bfloat16)],
)
def test_gpu_split_path_matches_one_split(n: int, vocab: int, dtype: torch.dtype) -> None:
    assert choose_num_splits(n, vocab) > 1
    torch.manual_seed(0)
    logits = (torch.randn(n, vocab, device="cuda") * 4).to(dtype)
    temp = torch.rand(n, device="cuda") + 0.3
    for seed in (1, 12345):
        one = gumbel_sample(logits, temp, seed, num_splits=1)
        for splits in (None, 2, 7, -(-vocab // BLOCK_V_CUDA)):
            assert torch.equal(gumbel_sample(logits, temp, seed, num_splits=splits), one)
