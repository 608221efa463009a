"""Structured outputs offline (LLM, the embedded SmolLM2): the bitmask kernel against
a per-token loop, both backends' grammars, and a mixed batch whose free requests get
the tokens they get alone."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

from pagedllm import SamplingParams
from pagedllm.config import StructuredOutputsConfig
from pagedllm.layers.grammar_bitmask import GrammarBitmask, apply_grammar_bitmask_
from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output import validate_structured_outputs

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_bitmask_matches_a_per_token_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 70, generator=gen)
    words = torch.randint(-(2**31), 2**31 - 1, (2, 3), dtype=torch.int64, generator=gen)
    bitmask = words.to(torch.int32).numpy()
    out = logits.clone()
    apply_grammar_bitmask_(out, GrammarBitmask.build([3, 1], bitmask, torch.device("cpu")))
    expected = logits.clone()
    for r, row in enumerate([3, 1]):
        for t in range(70):
            if not (int(bitmask[r, t // 32]) >> (t % 32)) & 1:
                expected[row, t] = float("-inf")
    assert torch.equal(out, expected)
    assert torch.isfinite(out[[0, 2, 4]]).all()  # rows without a grammar untouched


@pytest.mark.parametrize("backend", ["guidance", "xgrammar"])
def test_invalid_specs_are_value_errors(backend: str) -> None:
    pytest.importorskip("xgrammar" if backend == "xgrammar" else "llguidance")
    config = StructuredOutputsConfig(backend=backend)
    for params, field in [
        (StructuredOutputsParams(json='{"type": '), "structured_outputs.json"),
        (StructuredOutputsParams(json={"type": "nonsense"}), "structured_outputs.json"),
        (StructuredOutputsParams(regex="(ab"), "structured_outputs.regex"),
    ]:
        with pytest.raises(ValueError, match=re.escape(field)):
            validate_structured_outputs(params, config)
    validate_structured_outputs(StructuredOutputsParams(json=SCHEMA), config)
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=["b"])


def _chat(llm: Any, text: str) -> str:
    tok = llm.get_tokenizer()
    messages = [{"role": "user", "content": text}]
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def test_json_choice_regex_offline(smol_llm: Any) -> None:
    prompt = _chat(smol_llm, "Describe a person as JSON with a name and an age.")
    cases = [
        StructuredOutputsParams(json=SCHEMA),
        StructuredOutputsParams(choice=["red", "green", "blue"]),
        StructuredOutputsParams(regex=r"[0-9]{3}-[a-z]{2}"),
        StructuredOutputsParams(json_object=True),
    ]
    params = [SamplingParams(max_tokens=60, temperature=0, structured_outputs=c) for c in cases]
    texts = [o.outputs[0].text for o in smol_llm.generate([prompt] * 4, params, use_tqdm=False)]
    jsonschema.validate(json.loads(texts[0]), SCHEMA)
    assert texts[1] in ("red", "green", "blue")
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", texts[2])
    assert isinstance(json.loads(texts[3]), dict)


def test_mixed_batch_free_requests_unchanged(smol_llm: Any) -> None:
    """Seeded free requests give the same tokens with constrained ones beside them."""
    prompts = [_chat(smol_llm, q) for q in ("Name a fruit.", "Count to five.", "Say hello.")]
    free = [SamplingParams(max_tokens=12, temperature=0.8, seed=7 + i) for i in range(3)]
    alone = [o.outputs[0].token_ids for o in smol_llm.generate(prompts, free, use_tqdm=False)]
    constrained = SamplingParams(
        max_tokens=12,
        temperature=0.8,
        seed=1,
        structured_outputs=StructuredOutputsParams(json=SCHEMA),
    )
    mixed = smol_llm.generate(
        [prompts[0], prompts[0], prompts[1], prompts[2], prompts[1]],
        [free[0], constrained, free[1], free[2], constrained],
        use_tqdm=False,
    )
    assert [mixed[i].outputs[0].token_ids for i in (0, 2, 3)] == alone
    assert np.all([mixed[i].outputs[0].text.startswith("{") for i in (1, 4)])


def test_async_scheduling_gives_the_same_constrained_tokens(smol_llm: Any) -> None:
    """With async scheduling on, a constrained step launches its forward pass, then
    samples under the mask once the grammar thread has advanced the grammars by the
    step before's tokens (EngineCore's deferred sampling, core/grammar_pipeline.py):
    the same tokens as the synchronous engine, and the free request beside it too."""
    from pagedllm import LLM
    from pagedllm.core.grammar_pipeline import PrefetchedOutput

    prompts = [_chat(smol_llm, "Describe a person as JSON."), _chat(smol_llm, "Say hello.")]
    params = [
        SamplingParams(max_tokens=24, temperature=0.8, seed=5, structured_outputs=StructuredOutputsParams(json=SCHEMA)),
        SamplingParams(max_tokens=24, temperature=0.8, seed=6),
    ]  # fmt: skip
    expected = [o.outputs[0].token_ids for o in smol_llm.generate(prompts, params, use_tqdm=False)]
    llm = LLM(max_model_len=1024, kv_cache_memory_bytes=64 << 20, async_scheduling=True)
    core = llm.llm_engine.core_client.core
    deferred: list[int] = []
    advanced: list[dict[str, bool]] = []
    sample_tokens = core.executor.sample_tokens

    def counted(bitmask: Any, req_ids: list[str]) -> Any:
        # The step before is still to be applied, but its tokens are in the grammars.
        result = core._pending[1]
        assert isinstance(result, PrefetchedOutput) and result.done()
        advanced.append(result.grammars_advanced)
        deferred.append(len(req_ids))
        return sample_tokens(bitmask, req_ids)

    core.executor.sample_tokens = counted
    try:
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    finally:
        llm.shutdown()
    assert got == expected
    # Every decode step of the constrained request sampled deferred (its first token
    # comes from the prefill step, launched with nothing in flight), one row each.
    assert len(deferred) >= len(got[0]) - 1 and max(deferred) == 1
    # Those steps advanced the constrained request's grammar (only), on the thread: all
    # but the first (whose step before may not have sampled it).
    assert all(set(a.values()) == {True} and len(a) == 1 for a in advanced[1:])
