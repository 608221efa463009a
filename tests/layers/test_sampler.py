"""Sampler and SamplingMetadata: greedy, truncation sets, distributions (chi-square),
penalties against a plain reference, seeded determinism, logprobs, masks, bias."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from pagedllm.layers import sampler as sampler_module
from pagedllm.layers.sampler import (
    Sampler,
    SamplerOutput,
    apply_logits_processing,
    compute_prompt_logprobs,
)
from pagedllm.layers.sampling_metadata import SamplingMetadata, make_generator
from pagedllm.sampling_params import SamplingParams

# Chi-square critical values at significance 0.001, indexed by degrees of freedom.
CHI2_CRIT_0_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322}
LOGITS_8 = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 0.3])
EOS = 7
# CPU always; the same checks on CUDA run on the GPU machine (pytest -m gpu).
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]


def build(
    params: Sequence[SamplingParams],
    outputs: Sequence[Sequence[int]] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    vocab_size: int = 8,
    device: str = "cpu",
    **kwargs: object,
) -> SamplingMetadata:
    n = len(params)
    return SamplingMetadata.build(
        params,
        outputs if outputs is not None else [[] for _ in range(n)],
        prompts if prompts is not None else [[] for _ in range(n)],
        generators if generators is not None else [None] * n,
        device,
        vocab_size,
        **kwargs,  # type: ignore[arg-type]
    )


def sample(
    logits: torch.Tensor, params: Sequence[SamplingParams], **kwargs: object
) -> SamplerOutput:
    device = str(logits.device)
    md = build(params, vocab_size=logits.shape[1], device=device, **kwargs)  # type: ignore[arg-type]
    return Sampler()(logits, md)


def repeat_rows(row: torch.Tensor, n: int) -> torch.Tensor:
    return row.unsqueeze(0).repeat(n, 1)


def reference_distribution(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> list[float]:
    """Plain reference: temperature, then top-k, top-p, min-p, renormalised."""
    probs = torch.softmax(logits.double() / temperature, dim=0).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep = order[:top_k] if top_k > 0 else order
    mass = sum(probs[i] for i in keep)
    kept, cumulative = [], 0.0
    for i in keep:  # smallest most-likely prefix whose (renormalised) mass reaches top_p
        kept.append(i)
        cumulative += probs[i] / mass
        if cumulative >= top_p:
            break
    top = max(probs[i] for i in kept)
    kept = [i for i in kept if probs[i] >= min_p * top]
    total = sum(probs[i] for i in kept)
    return [probs[i] / total if i in kept else 0.0 for i in range(len(probs))]


# ---- greedy -------------------------------------------------------------------
def test_greedy_is_argmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 100)
    out = sample(logits, [SamplingParams(temperature=0.0)] * 16)
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))
    assert out.logprobs is None and out.ranks is None


def test_greedy_rows_in_mixed_batch_are_argmax() -> None:
    torch.manual_seed(1)
    logits = torch.randn(8, 50)
    params = [
        SamplingParams(temperature=0.0 if i % 2 else 1.0, top_k=5 if i % 4 == 0 else 0)
        for i in range(8)
    ]
    md = build(params, vocab_size=50)
    assert not md.all_greedy and not md.all_random
    out = Sampler()(logits, md)
    assert torch.equal(out.sampled_token_ids[1::2], logits.argmax(dim=-1)[1::2])


def test_sampler_does_not_modify_logits() -> None:
    logits = torch.randn(4, 8)
    before = logits.clone()
    params = [
        SamplingParams(temperature=0.7, top_k=3, top_p=0.8, min_p=0.1, logit_bias={1: 3.0}),
        SamplingParams(temperature=0.0, repetition_penalty=1.5, allowed_token_ids=[1, 2]),
        SamplingParams(presence_penalty=1.0, frequency_penalty=0.5),
        SamplingParams(),
    ]
    sample(logits, params, outputs=[[1, 1], [2], [3], []], prompts=[[4], [5], [6], [7]])
    assert torch.equal(logits, before)


# ---- truncation sets and distributions ---------------------------------------------
TRUNCATIONS = [
    dict(top_k=3),
    dict(top_p=0.6),
    dict(min_p=0.2),
    dict(top_k=5, top_p=0.8),
    dict(top_k=6, top_p=0.9, min_p=0.15),
    dict(top_k=1),
    dict(top_p=0.01),
]


@pytest.mark.parametrize(
    "knobs", TRUNCATIONS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
)
def test_truncation_never_samples_outside_allowed_set(knobs: dict) -> None:
    torch.manual_seed(2)
    temperature = 0.9
    allowed = {
        i for i, p in enumerate(reference_distribution(LOGITS_8, temperature, **knobs)) if p > 0
    }
    n = 4000
    out = sample(repeat_rows(LOGITS_8, n), [SamplingParams(temperature=temperature, **knobs)] * n)
    drawn = set(out.sampled_token_ids.tolist())
    assert drawn <= allowed
    assert drawn == allowed  # every allowed token is likely enough to show up in 4000 draws


def test_top_k_differs_per_row() -> None:
    torch.manual_seed(3)
    ks = [1, 2, 5, 0]
    n = 1000
    logits = repeat_rows(LOGITS_8, n * len(ks))
    params = [SamplingParams(top_k=k) for k in ks for _ in range(n)]
    tokens = sample(logits, params).sampled_token_ids.view(len(ks), n)
    order = LOGITS_8.argsort(descending=True).tolist()
    for row, k in zip(tokens, ks):
        assert set(row.tolist()) <= set(order[: k or 8])


CHI2_CASES = [
    dict(temperature=1.0),
    dict(temperature=0.7),
    dict(temperature=1.5, top_k=4),
    dict(temperature=1.0, top_k=6, top_p=0.9),
    dict(temperature=0.8, top_p=0.95, min_p=0.05),
]


@pytest.mark.parametrize(
    "knobs", CHI2_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
)
def test_sampling_matches_distribution_chi_square(knobs: dict) -> None:
    torch.manual_seed(4)
    n = 20000
    expected = [p * n for p in reference_distribution(LOGITS_8, **knobs)]
    out = sample(repeat_rows(LOGITS_8, n), [SamplingParams(**knobs)] * n)
    counts = torch.bincount(out.sampled_token_ids, minlength=8).tolist()
    support = [i for i, e in enumerate(expected) if e > 0]
    assert all(counts[i] == 0 for i in range(8) if i not in support)
    chi2 = sum((counts[i] - expected[i]) ** 2 / expected[i] for i in support)
    assert chi2 < CHI2_CRIT_0_001[len(support) - 1], (chi2, counts, expected)


# ---- penalties ------------------------------------------------------------------
def reference_penalties(
    logits: list[float], prompt: list[int], output: list[int], params: SamplingParams
) -> list[float]:
    result = list(logits)
    for token in range(len(result)):
        if token in prompt or token in output:
            r = params.repetition_penalty
            result[token] = result[token] / r if result[token] > 0 else result[token] * r
        count = output.count(token)
        result[token] -= params.frequency_penalty * count
        if count > 0:
            result[token] -= params.presence_penalty
    return result


@pytest.mark.parametrize("device", DEVICES)
def test_penalties_match_reference(device: str) -> None:
    torch.manual_seed(5)
    vocab = 20
    logits = torch.randn(5, vocab) * 3
    params = [
        SamplingParams(repetition_penalty=1.7),
        SamplingParams(temperature=0.0),  # no penalty: must be left untouched
        SamplingParams(frequency_penalty=0.6),
        SamplingParams(presence_penalty=-1.2, frequency_penalty=0.3, repetition_penalty=0.8),
        SamplingParams(presence_penalty=1.1),
    ]
    prompts = [[1, 2, 3, 3], [4, 5], [6], [7, 8, 9], [0]]
    outputs = [[3, 4, 4, 10], [5, 5], [11, 11, 11, 12], [9, 13, 13], []]
    md = build(params, outputs, prompts, vocab_size=vocab, device=device)
    assert md.penalties is not None and md.penalties.rows.tolist() == [0, 2, 3, 4]
    got = apply_logits_processing(logits.to(device), md).cpu()
    for i in range(5):
        want = reference_penalties(logits[i].tolist(), prompts[i], outputs[i], params[i])
        torch.testing.assert_close(got[i], torch.tensor(want), rtol=1e-6, atol=1e-6)


def test_no_penalty_tensors_when_unused() -> None:
    md = build([SamplingParams(), SamplingParams(temperature=0.0)], outputs=[[1, 2], [3]])
    assert md.penalties is None and md.logit_bias is None and md.banned_tokens is None
    assert (
        md.allowed_token_mask is None and md.top_k is None and md.top_p is None and md.min_p is None
    )
    greedy = build([SamplingParams(temperature=0.0)] * 3)
    assert greedy.all_greedy and greedy.temperature is None


# ---- seeds ----------------------------------------------------------------------
def seeded_params() -> SamplingParams:
    return SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=42)


def run_steps(
    logits_steps: list[torch.Tensor], params: list[SamplingParams], gens: list, device: str
) -> list[list[int]]:
    sampler = Sampler()
    tokens = []
    for step, logits in enumerate(logits_steps):
        torch.manual_seed(1000 + step * 7 + len(params))  # the global RNG must not matter
        md = build(params, generators=gens, vocab_size=logits.shape[1], device=device)
        tokens.append(sampler(logits.to(device), md).sampled_token_ids.tolist())
    return tokens


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_row_same_alone_and_in_batch(device: str) -> None:
    vocab, steps = 500, 6
    torch.manual_seed(6)
    row_logits = [torch.randn(vocab) * 2 for _ in range(steps)]
    alone = run_steps(
        [r.unsqueeze(0) for r in row_logits],
        [seeded_params()],
        [make_generator(42, device)],
        device,
    )
    others = [SamplingParams(), SamplingParams(temperature=0.0), SamplingParams(top_p=0.5, seed=7)]
    batch_logits = [
        torch.cat([torch.randn(2, vocab), r.unsqueeze(0), torch.randn(2, vocab)])
        for r in row_logits
    ]
    params = [others[0], others[1], seeded_params(), others[2], SamplingParams(min_p=0.1)]
    gens = [None, None, make_generator(42, device), make_generator(7, device), None]
    batched = run_steps(batch_logits, params, gens, device)
    assert [t[0] for t in alone] == [t[2] for t in batched]
    assert len({t[0] for t in alone}) > 1  # really sampling, not stuck on one token


def test_seeded_generator_matches_fresh_exponential_draw() -> None:
    """A seeded row's noise is exactly torch.empty(V).exponential_(generator=g)."""
    vocab = 64
    logits = torch.randn(1, vocab)
    token = sample(logits, [SamplingParams(seed=3)], generators=[make_generator(3, "cpu")])
    noise = torch.empty(vocab).exponential_(generator=make_generator(3, "cpu"))
    assert token.sampled_token_ids.item() == int((logits.softmax(-1)[0] / noise).argmax())


# ---- logprobs -----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_and_ranks_match_log_softmax(device: str) -> None:
    torch.manual_seed(8)
    vocab = 50
    logits = torch.randn(6, vocab)
    params = [
        SamplingParams(logprobs=3),
        SamplingParams(temperature=0.0, logprobs=1),
        SamplingParams(),
        SamplingParams(temperature=0.5, logit_bias={0: 50.0}, logprobs=0),  # raw, not biased
        SamplingParams(top_k=2, logprobs=2),
        SamplingParams(repetition_penalty=2.0, logprobs=3),
    ]
    got = sample(logits.to(device), params, outputs=[[], [], [], [], [], [1, 2]])
    assert got.logprobs is not None and got.logprobs_token_ids is not None and got.ranks is not None
    out = SamplerOutput(
        got.sampled_token_ids.cpu(),
        got.logprobs_token_ids.cpu(),
        got.logprobs.cpu(),
        got.ranks.cpu(),
    )
    assert out.logprobs is not None and out.logprobs_token_ids is not None and out.ranks is not None
    assert out.logprobs.shape == (6, 4) and out.logprobs_token_ids.shape == (6, 4)
    reference = torch.log_softmax(logits, dim=-1)
    sampled = out.sampled_token_ids
    assert sampled[3].item() == 0
    assert torch.equal(out.logprobs_token_ids[:, 0], sampled)
    torch.testing.assert_close(out.logprobs[:, 0], reference.gather(1, sampled[:, None])[:, 0])
    top = reference.topk(3, dim=-1)
    assert torch.equal(out.logprobs_token_ids[:, 1:], top.indices)
    torch.testing.assert_close(out.logprobs[:, 1:], top.values)
    for i in range(6):
        order = reference[i].argsort(descending=True).tolist()
        assert out.ranks[i].item() == order.index(sampled[i].item()) + 1


@pytest.mark.parametrize("k, width", [(0, 1), (-1, 9)])
def test_logprobs_zero_and_all(k: int, width: int) -> None:
    out = sample(torch.randn(2, 8), [SamplingParams(logprobs=k)] * 2)
    assert out.logprobs is not None and out.logprobs.shape == (2, width)


@pytest.mark.parametrize("chunk_elems", [1 << 25, 30])
def test_compute_prompt_logprobs(monkeypatch: pytest.MonkeyPatch, chunk_elems: int) -> None:
    monkeypatch.setattr(sampler_module, "_PROMPT_LOGPROBS_CHUNK_ELEMS", chunk_elems)
    torch.manual_seed(9)
    logits = torch.randn(7, 30)
    targets = torch.randint(0, 30, (7,))
    out = compute_prompt_logprobs(logits, targets, 2)
    reference = torch.log_softmax(logits, dim=-1)
    assert out.logprobs_token_ids.shape == (7, 3)
    assert torch.equal(out.logprobs_token_ids[:, 0], targets)
    torch.testing.assert_close(out.logprobs[:, 0], reference.gather(1, targets[:, None])[:, 0])
    torch.testing.assert_close(out.logprobs[:, 1:], reference.topk(2, dim=-1).values)
    want_ranks = [(reference[i] > reference[i, targets[i]]).sum().item() + 1 for i in range(7)]
    assert out.ranks.tolist() == want_ranks


# ---- masks and bias -----------------------------------------------------------------
def eos_params(**kwargs: object) -> SamplingParams:
    params = SamplingParams(**kwargs)  # type: ignore[arg-type]
    params.update_from_generation_config({}, eos_token_id=EOS)
    return params


@pytest.mark.parametrize("device", DEVICES)
def test_min_tokens_masks_eos_and_stop_ids(device: str) -> None:
    logits = torch.zeros(1, 8, device=device)
    logits[0, EOS], logits[0, 5], logits[0, 2] = 10.0, 9.0, 8.0
    greedy = eos_params(temperature=0.0, min_tokens=3, stop_token_ids=[5])
    assert sample(logits, [greedy], outputs=[[1]]).sampled_token_ids.item() == 2
    assert sample(logits, [greedy], outputs=[[1, 1, 1]]).sampled_token_ids.item() == EOS
    n = 2000
    random = [eos_params(temperature=1.0, min_tokens=2)] * n
    drawn = sample(repeat_rows(logits[0], n), random, outputs=[[4]] * n).sampled_token_ids
    assert EOS not in drawn.tolist()
    ignore = eos_params(temperature=0.0, min_tokens=3, ignore_eos=True)
    assert sample(logits, [ignore], outputs=[[1]]).sampled_token_ids.item() == EOS


def test_logit_bias() -> None:
    torch.manual_seed(10)
    n = 1000
    logits = repeat_rows(LOGITS_8, n)
    up = sample(logits, [SamplingParams(logit_bias={6: 100.0})] * n).sampled_token_ids
    assert set(up.tolist()) == {6}
    down = sample(LOGITS_8[None], [SamplingParams(temperature=0.0, logit_bias={0: -100.0})])
    assert down.sampled_token_ids.item() == 1


@pytest.mark.parametrize("device", DEVICES)
def test_allowed_token_ids(device: str) -> None:
    torch.manual_seed(11)
    n = 2000
    params = [
        SamplingParams(allowed_token_ids=[3, 6]) if i % 2 else SamplingParams() for i in range(n)
    ]
    drawn = sample(repeat_rows(LOGITS_8, n).to(device), params).sampled_token_ids.cpu()
    assert set(drawn[1::2].tolist()) == {3, 6}
    assert len(set(drawn[0::2].tolist())) > 2


def test_bad_words() -> None:
    logits = torch.zeros(2, 8)
    logits[:, 4], logits[:, 3], logits[:, 1] = 9.0, 8.0, 7.0
    params = [SamplingParams(temperature=0.0)] * 2
    bad = [[[2, 4]], [[3], [2, 4]]]
    out = sample(logits, params, outputs=[[1, 2], [1, 1]], bad_words_token_ids_list=bad)
    assert out.sampled_token_ids.tolist() == [3, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_large_batch_builds_and_samples(device: str) -> None:
    """256 rows of mixed parameters (every code path at once)."""
    torch.manual_seed(12)
    vocab, n = 4096, 256
    kinds = [
        SamplingParams(temperature=0.0, logit_bias={5: 2.0}),
        SamplingParams(temperature=0.8, top_p=0.9, allowed_token_ids=list(range(100))),
        SamplingParams(top_k=40, seed=1, repetition_penalty=1.2),
        SamplingParams(min_p=0.05, presence_penalty=0.5, logprobs=5),
        eos_params(min_tokens=100, max_tokens=200, stop_token_ids=[3]),
    ]
    params = [kinds[i % len(kinds)] for i in range(n)]
    gens = [make_generator(i, device) if params[i].seed is not None else None for i in range(n)]
    outputs = [list(range(i % 50)) for i in range(n)]
    prompts = [list(range(100, 100 + i)) for i in range(n)]
    md = build(params, outputs, prompts, gens, vocab, device, bad_words_token_ids_list=[[[1]]] * n)
    assert md.penalties is not None
    assert md.penalties.rows.tolist() == [i for i in range(n) if i % len(kinds) in (2, 3)]
    out = Sampler()(torch.randn(n, vocab, device=device), md)
    assert out.sampled_token_ids.shape == (n,) and out.sampled_token_ids.dtype == torch.int64
    tokens = out.sampled_token_ids.tolist()
    assert all(0 <= t < vocab and t != 1 for t in tokens)  # 1 is a bad word everywhere
    assert all(t < 100 for t in tokens[1 :: len(kinds)])  # allowed_token_ids
    assert all(t not in (3, EOS) for t in tokens[4 :: len(kinds)])  # min_tokens
    assert out.logprobs is not None and out.logprobs.shape == (n, 6)
    assert not math.isnan(float(out.logprobs.sum()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_logits_processing_never_waits_for_the_device() -> None:
    """Masks, bias, banned ids and a grammar bitmask on CUDA launch without a host
    sync: under async scheduling the sampler is launched while the forward pass still
    runs, and a sync there made the host wait for it every constrained step."""
    import dataclasses

    import numpy as np

    from pagedllm.layers.grammar_bitmask import GrammarBitmask

    params = [
        SamplingParams(allowed_token_ids=[1, 2]),
        SamplingParams(logit_bias={3: 2.0}),
        SamplingParams(min_tokens=4, stop_token_ids=[5]),
        SamplingParams(),
    ]
    md = build(params, outputs=[[], [], [1], []], vocab_size=40, device="cuda")
    assert md.banned_tokens is not None and md.allowed_token_mask is not None
    words = np.zeros((1, 2), dtype=np.int32)
    words[0, 0] = 0b1010  # row 3 may take tokens 1 and 3 only
    md = dataclasses.replace(
        md, grammar_bitmask=GrammarBitmask.build([3], words, torch.device("cuda"), 4)
    )
    logits = torch.randn(4, 40, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = apply_logits_processing(logits, md)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got = got.cpu()
    assert torch.isinf(got[0, 3:]).all() and torch.isfinite(got[0, 1:3]).all()
    assert torch.isinf(got[2, 5]) and torch.isfinite(got[3, [1, 3]]).all()
    assert torch.isinf(got[3]).sum() == 38
