"""The fast paths of structured outputs give what the plain ones give: the bitmask
filled on the backend's thread pool is bit-identical to the row-at-a-time fill
(both backends), and constrained generation samples the same tokens with either
fill (the embedded SmolLM2, greedy)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from pagedllm import SamplingParams
from pagedllm.config import StructuredOutputsConfig
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
    manager: StructuredOutputManager, grammars: list[StructuredOutputGrammar], eos: int
) -> None:
    """Advance grammar i by up to i % 9 allowed tokens (seeded; never EOS, which
    ends a grammar: the engine asks no mask of an ended one), so the rows differ."""
    rng = np.random.default_rng(0)
    for step in range(8):
        mask = _fill(manager, grammars, 1 << 30)
        for i, grammar in enumerate(grammars):
            bits = np.unpackbits(mask[i].view(np.uint8), bitorder="little")[: manager.vocab_size]
            bits[eos] = 0
            if i % 9 > step and bits.any():
                assert grammar.accept_token(int(rng.choice(np.flatnonzero(bits))))


@pytest.mark.parametrize("backend", ["guidance", "xgrammar"])
def test_parallel_fill_is_bit_identical_to_serial(smol_llm: Any, backend: str) -> None:
    pytest.importorskip("xgrammar" if backend == "xgrammar" else "llguidance")
    manager = _manager(smol_llm, backend)
    try:
        grammars = [
            manager.grammar_init(SPECS[i % len(SPECS)]).future.result(timeout=120)
            for i in range(40)
        ]
        _walk(manager, grammars, smol_llm.get_tokenizer().eos_token_id)
        serial = _fill(manager, grammars, 1 << 30)
        parallel = _fill(manager, grammars, 1)
        # Rows handed over out of order land where they belong too.
        order = list(np.random.default_rng(1).permutation(len(grammars)))
        shuffled = _fill(manager, [grammars[i] for i in order], 1)
    finally:
        manager.shutdown()
    assert len({row.tobytes() for row in serial}) > 8  # the rows really differ
    assert np.array_equal(serial, parallel)
    assert np.array_equal(serial[order], shuffled)


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
