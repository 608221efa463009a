"""The one-pass grammar bitmask kernel: the same masked copy as the torch reference
and as the sampler's CPU path (numpy unpack), for every row, a subset of rows, a
vocabulary past the mask's words, and random words (sign bit included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedllm.layers.grammar_bitmask import GrammarBitmask, apply_grammar_bitmask_
from pagedllm.layers.kernels.triton_grammar_bitmask import masked_logits, masked_logits_ref


def _case(n: int, r: int, words: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=gen)
    bits = torch.randint(-(2**31), 2**31 - 1, (r, words), dtype=torch.int64, generator=gen)
    return logits, bits.to(torch.int32)


def _cpu_path(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The sampler's path without a GPU: clone, numpy unpack, masked fill."""
    out = logits.clone()
    mask = GrammarBitmask.build(rows, bitmask.numpy(), torch.device("cpu"), logits.shape[0])
    apply_grammar_bitmask_(out, mask)
    return out


@pytest.mark.parametrize("vocab", [64, 100, 150])  # 150: past the 4 words' 128 tokens
def test_every_row(vocab: int) -> None:
    logits, bitmask = _case(3, 3, 4, vocab, seed=vocab)
    out = masked_logits(logits, bitmask)
    assert torch.equal(out, masked_logits_ref(logits, bitmask))
    assert torch.equal(out, _cpu_path(logits, bitmask, [0, 1, 2]))
    assert torch.isinf(out[:, 128:]).all()


def test_subset_of_rows_leaves_free_rows_unchanged() -> None:
    logits, bitmask = _case(5, 2, 3, 90, seed=1)
    rows = torch.tensor([3, 0])
    out = masked_logits(logits, bitmask, rows)
    assert torch.equal(out, masked_logits_ref(logits, bitmask, rows))
    assert torch.equal(out, _cpu_path(logits, bitmask, [3, 0]))
    for free in (1, 2, 4):
        assert torch.equal(out[free], logits[free])


def test_single_allowed_token_and_input_untouched() -> None:
    logits = torch.randn(2, 70)
    bitmask = torch.zeros(2, 3, dtype=torch.int32)
    bitmask[0, 2] = 1 << 5  # token 69
    bitmask[1, 0] = np.int32(-(2**31))  # token 31 (the sign bit)
    before = logits.clone()
    out = masked_logits(logits, bitmask)
    assert torch.equal(logits, before)
    assert out[0].argmax() == 69 and torch.isfinite(out[0]).sum() == 1
    assert out[1].argmax() == 31 and torch.isfinite(out[1]).sum() == 1


def test_row_count_mismatch_is_an_error() -> None:
    logits, bitmask = _case(3, 2, 2, 64, seed=2)
    with pytest.raises(ValueError, match="rows"):
        masked_logits(logits, bitmask)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_t1_shape_matches_cpu_path() -> None:
    logits, bitmask = _case(256, 200, 4748, 151936, seed=3)
    rows = list(range(0, 256))[:200]
    out = masked_logits(logits.cuda(), bitmask.cuda(), torch.tensor(rows).cuda())
    assert torch.equal(out.cpu(), _cpu_path(logits, bitmask, rows))
    full = masked_logits(logits[:200].cuda(), bitmask.cuda())
    assert torch.equal(full.cpu(), _cpu_path(logits[:200], bitmask, rows))
