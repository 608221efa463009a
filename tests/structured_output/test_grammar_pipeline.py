"""The core's grammar thread (core/grammar_pipeline.py) against the in-line path: it
advances the grammars of a step's sampled rows by exactly their tokens, fills the
next bitmask from the advanced states, and the scheduler's grammar stop check then
uses its results instead of advancing the grammars a second time."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pagedllm.config import StructuredOutputsConfig
from pagedllm.core.grammar_pipeline import GrammarPipeline, GrammarRow
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.stop_checker import check_grammar_stops
from pagedllm.sampling_params import SamplingParams, StructuredOutputsParams
from pagedllm.scheduler_output import ModelRunnerOutput
from pagedllm.structured_output import StructuredOutputManager

SPEC = StructuredOutputsParams(regex=r"a[0-9]{2,4}")


def _manager(smol_llm: Any) -> StructuredOutputManager:
    config = dataclasses.replace(
        smol_llm.llm_engine.engine_config,
        structured_outputs_config=StructuredOutputsConfig(backend="guidance"),
    )
    return StructuredOutputManager(config)


def _request(manager: StructuredOutputManager, req_id: str) -> Request:
    request = Request(req_id, [1, 2, 3], SamplingParams(max_tokens=8), arrival_time=0.0)
    request.structured_output_request = manager.grammar_init(SPEC)
    request.structured_output_request.future.result(timeout=120)
    return request


def _token(smol_llm: Any, text: str) -> int:
    ids = smol_llm.get_tokenizer().encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return int(ids[0])


def test_thread_advances_once_and_fills_from_the_advanced_states(smol_llm: Any) -> None:
    manager = _manager(smol_llm)
    pipeline = GrammarPipeline(manager)
    try:
        ours = [_request(manager, str(i)) for i in range(3)]
        inline = [_request(manager, str(i)) for i in range(3)]
        letter, dash = _token(smol_llm, "a"), _token(smol_llm, "-")
        # Step N: rows 0 and 2 sample under a grammar; row 1 is a chunk (no token).
        output = ModelRunnerOutput(req_ids=["0", "1", "2"], sampled_token_ids=[letter, None, dash])
        rows = [
            GrammarRow(i, r.request_id, r.structured_output_request.grammar)
            for i, r in enumerate(ours)
        ]  # type: ignore[union-attr]
        prefetched = pipeline.advance(output, rows)
        bitmask = pipeline.fill([r.structured_output_request.grammar for r in ours]).result()  # type: ignore[union-attr]
        assert prefetched.get() is output
        # "-" cannot start the regex ("a" can): the grammar said no, and the stop check believes it.
        assert prefetched.grammars_advanced == {"0": True, "2": False}

        batch = [(ours[0], letter), (ours[2], dash)]
        stopped = check_grammar_stops(batch, prefetched.grammars_advanced)
        expected = check_grammar_stops([(inline[0], letter), (inline[2], dash)])
        inline_mask = manager.grammar_bitmask([r.structured_output_request.grammar for r in inline])  # type: ignore[union-attr]
    finally:
        pipeline.shutdown()
        manager.shutdown()
    assert [r.request_id for r in stopped] == [r.request_id for r in expected] == ["2"]
    assert ours[2].status is RequestStatus.FINISHED_STOPPED
    # Advanced once on the thread (not again in the stop check): the same states as the
    # in-line path, so the same next bitmask; and the advanced row differs from a fresh one.
    assert np.array_equal(bitmask[:2], inline_mask[:2])
    assert not np.array_equal(bitmask[0], bitmask[1])


def test_an_executor_error_reaches_the_core_through_the_thread(smol_llm: Any) -> None:
    class Failing:
        def get(self) -> ModelRunnerOutput:
            raise RuntimeError("step failed")

    manager = _manager(smol_llm)
    pipeline = GrammarPipeline(manager)
    try:
        prefetched = pipeline.advance(Failing(), [])
        try:
            prefetched.get()
        except RuntimeError as exc:
            assert str(exc) == "step failed"
        else:
            raise AssertionError("the executor's error was lost")
    finally:
        pipeline.shutdown()
        manager.shutdown()
