"""The fast paths of structured outputs give what the plain ones give: the bitmask
filled on the backend's thread pool is bit-identical to the row-at-a-time fill, and
the batched advance leaves the same grammar states (both backends); constrained
generation samples the same tokens either way (the embedded SmolLM2, greedy); the
byte-wise, in-place mask application matches a per-token loop (CPU; CUDA against
the CPU where there is one)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from pagedllm import SamplingParams
from pagedllm.config import StructuredOutputsConfig
from pagedllm.layers.grammar_bitmask import GrammarBitmask, apply_grammar_bitmask_, unpack_bytes
from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output import StructuredOutputManager, tuning
from pagedllm.structured_output.backend_types import StructuredOutputGrammar

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"enum": ["a", "b", "c"]},
    },
    "required": ["id", "tags", "kind"],
}
SPECS = [
    StructuredOutputsParams(json=SCHEMA),
    StructuredOutputsParams(regex=r"[0-9]{2,4}-[a-z]+"),
    StructuredOutputsParams(choice=["red", "green", "blue"]),
    StructuredOutputsParams(json_object=True),
]


def _manager(smol_llm: Any, backend: str) -> StructuredOutputManager:
    config = dataclasses.replace(
        smol_llm.llm_engine.engine_config,
        structured_outputs_config=StructuredOutputsConfig(backend=backend),
    )
    return StructuredOutputManager(config)


def _fill(
    manager: StructuredOutputManager, grammars: list[StructuredOutputGrammar], min_rows: int
) -> np.ndarray:
    old = tuning.PARALLEL_FILL_MIN_ROWS
    tuning.PARALLEL_FILL_MIN_ROWS = min_rows
    try:
        return manager.grammar_bitmask(grammars)
    finally:
        tuning.PARALLEL_FILL_MIN_ROWS = old


def _walk(
    manager: StructuredOutputManager,
    grammars: list[StructuredOutputGrammar],
    twins: list[StructuredOutputGrammar],
    eos: int,
) -> None:
    """Advance grammar i by up to i % 9 allowed tokens (seeded; never EOS, which
    ends a grammar: the engine asks no mask of an ended one), so the rows differ:
    `grammars` one accept_token at a time, `twins` (the same specs) with the same
    tokens through the batch call on the backend's threads."""
    rng = np.random.default_rng(0)
    for step in range(8):
        mask = _fill(manager, grammars, 1 << 30)
        batch: list[tuple[StructuredOutputGrammar, int]] = []
        for i, grammar in enumerate(grammars):
            bits = np.unpackbits(mask[i].view(np.uint8), bitorder="little")[: manager.vocab_size]
            bits[eos] = 0
            if i % 9 > step and bits.any():
                token = int(rng.choice(np.flatnonzero(bits)))
                assert grammar.accept_token(token)
                batch.append((twins[i], token))
        old = tuning.PARALLEL_FILL_MIN_ROWS
        tuning.PARALLEL_FILL_MIN_ROWS = 1
        try:
            assert type(twins[0]).accept_tokens(batch) == [True] * len(batch)
        finally:
            tuning.PARALLEL_FILL_MIN_ROWS = old


@pytest.mark.parametrize("backend", ["guidance", "xgrammar"])
def test_parallel_fill_and_advance_are_bit_identical_to_serial(smol_llm: Any, backend: str) -> None:
    pytest.importorskip("xgrammar" if backend == "xgrammar" else "llguidance")
    manager = _manager(smol_llm, backend)
    try:
        grammars, twins = (
            [
                manager.grammar_init(SPECS[i % len(SPECS)]).future.result(timeout=120)
                for i in range(40)
            ]
            for _ in range(2)
        )
        _walk(manager, grammars, twins, smol_llm.get_tokenizer().eos_token_id)
        serial = _fill(manager, grammars, 1 << 30)
        parallel = _fill(manager, grammars, 1)
        twins_parallel = _fill(manager, twins, 1)
        # Rows handed over out of order land where they belong too.
        order = list(np.random.default_rng(1).permutation(len(grammars)))
        shuffled = _fill(manager, [grammars[i] for i in order], 1)
        prefilled = [
            _fill_over(manager, grammars, fill, rows) for fill in (0, -1) for rows in (1, 1 << 30)
        ]
    finally:
        manager.shutdown()
    assert len({row.tobytes() for row in serial}) > 8  # the rows really differ
    assert np.array_equal(serial, parallel)
    assert np.array_equal(serial, twins_parallel)  # batch-advanced twins: same states
    assert np.array_equal(serial[order], shuffled)
    # The backends write every word of a row: the manager's uninitialised buffer is safe.
    assert all(np.array_equal(serial, p) for p in prefilled)


def _fill_over(
    manager: StructuredOutputManager,
    grammars: list[StructuredOutputGrammar],
    word: int,
    min_rows: int,
) -> np.ndarray:
    """The backend's fill into a buffer whose words were all `word` before."""
    bitmask = np.full((len(grammars), manager.num_words), word, dtype=np.int32)
    old = tuning.PARALLEL_FILL_MIN_ROWS
    tuning.PARALLEL_FILL_MIN_ROWS = min_rows
    try:
        backend = manager._get_backend()
        backend.fill_bitmask([(g, i) for i, g in enumerate(grammars)], bitmask)
    finally:
        tuning.PARALLEL_FILL_MIN_ROWS = old
    return bitmask


def test_constrained_tokens_same_with_serial_and_parallel_fill(
    smol_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 constrained requests (over the parallel threshold), greedy: the same tokens
    whichever way the bitmask is filled."""
    tok = smol_llm.get_tokenizer()
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"Give item {i} as JSON."}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(20)
    ]
    params = [
        SamplingParams(max_tokens=16, temperature=0, structured_outputs=SPECS[i % len(SPECS)])
        for i in range(20)
    ]
    runs = []
    for min_rows in (1 << 30, 1):
        monkeypatch.setattr(tuning, "PARALLEL_FILL_MIN_ROWS", min_rows)
        outputs = smol_llm.generate(prompts, params, use_tqdm=False)
        runs.append([list(o.outputs[0].token_ids) for o in outputs])
    assert runs[0] == runs[1]
    assert all(runs[0])
    texts = [o.outputs[0].text for o in outputs]
    assert all(t in ("red", "green", "blue") for t in texts[2::4])


def _reference_apply(logits: torch.Tensor, rows: list[int], bitmask: np.ndarray) -> torch.Tensor:
    expected = logits.clone()
    for r, row in enumerate(rows):
        for t in range(logits.shape[1]):
            word = t // 32
            if word >= bitmask.shape[1] or not (int(bitmask[r, word]) >> (t % 32)) & 1:
                expected[row, t] = float("-inf")
    return expected


@pytest.mark.parametrize("vocab", [64, 70, 100])
def test_bitmask_over_every_row_applies_in_place(vocab: int) -> None:
    """Every row under a grammar, in order: no gather (rows None); a logits width
    past 32 * W (vocab 100 with 3 words) is not allowed."""
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(4, vocab, generator=gen)
    words = torch.randint(-(2**31), 2**31 - 1, (4, 3), dtype=torch.int64, generator=gen)
    bitmask = words.to(torch.int32).numpy()
    mask = GrammarBitmask.build([0, 1, 2, 3], bitmask, torch.device("cpu"), num_logits_rows=4)
    assert mask.rows is None
    out = logits.clone()
    apply_grammar_bitmask_(out, mask)
    assert torch.equal(out, _reference_apply(logits, [0, 1, 2, 3], bitmask))


def test_device_unpack_matches_numpy() -> None:
    """The shift-based unpack CUDA uses gives numpy's little-endian bit order."""
    data = np.random.default_rng(0).integers(0, 256, (3, 40), dtype=np.uint8)
    expected = np.unpackbits(data, axis=1, bitorder="little")
    assert np.array_equal(unpack_bytes(torch.from_numpy(data)).numpy(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bitmask_on_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 151936, generator=gen)
    words = torch.randint(-(2**31), 2**31 - 1, (3, 4748), dtype=torch.int64, generator=gen)
    bitmask = words.to(torch.int32).numpy()
    for rows, n in (([4, 0, 2], None), ([0, 1, 2], 3)):
        cpu = logits[: n or 6].clone()
        apply_grammar_bitmask_(cpu, GrammarBitmask.build(rows, bitmask, torch.device("cpu"), n))
        gpu = logits[: n or 6].cuda()
        apply_grammar_bitmask_(gpu, GrammarBitmask.build(rows, bitmask, torch.device("cuda"), n))
        assert torch.equal(gpu.cpu(), cpu)
