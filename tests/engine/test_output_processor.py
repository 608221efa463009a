"""OutputProcessor on its own, fed EngineCoreOutputs by hand (no engine): the n samples
of a request gathered by index, cumulative / delta / final-only outputs, a stop string
stops its child (reported to the caller, later tokens dropped), finish reasons from
the core's statuses, the core's timestamps in the metrics, pooled outputs, abort."""

from __future__ import annotations

from typing import Any

import pytest

from pagedllm.core.messages import EngineCoreOutput, EngineCoreRequest
from pagedllm.core.request import RequestStatus
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.request_builder import BuiltRequest, RequestBuilder
from pagedllm.outputs import PoolingRequestOutput, RequestOutput
from pagedllm.sampling_params import PoolingParams, RequestOutputKind, SamplingParams

STOPPED = int(RequestStatus.FINISHED_STOPPED)
LENGTH = int(RequestStatus.FINISHED_LENGTH_CAPPED)


@pytest.fixture(scope="module")
def builder(smol_llm: Any) -> RequestBuilder:
    engine = smol_llm.llm_engine
    return RequestBuilder(engine.engine_config, engine.tokenizer, engine.core_client.num_gpu_blocks)


def _ids(builder: RequestBuilder, text: str) -> list[int]:
    return list(builder.tokenizer.encode(text, add_special_tokens=False))


def _build(builder: RequestBuilder, rid: str, **params: Any) -> BuiltRequest:
    return builder.build(rid, "Hello", SamplingParams(temperature=0.0, **params), 1000.0)


def test_n_samples_are_gathered_by_index(builder: RequestBuilder) -> None:
    processor = OutputProcessor(builder.tokenizer)
    built = _build(builder, "r", n=2, max_tokens=4)
    processor.add_request("r", built)
    first, second = (c.request_id for c in built.children)
    a, b = _ids(builder, " one"), _ids(builder, " two")
    outputs, stopped = processor.process(
        [EngineCoreOutput(second, b, finish_status=LENGTH), EngineCoreOutput(first, a)]
    )
    assert stopped == [] and outputs[0].finished is False
    (out,) = processor.process([EngineCoreOutput(first, [], finish_status=LENGTH)])[0]
    assert isinstance(out, RequestOutput) and out.finished
    assert [c.index for c in out.outputs] == [0, 1]
    assert [c.text for c in out.outputs] == [" one", " two"]
    assert [c.finish_reason for c in out.outputs] == ["length", "length"]
    assert not processor.has_request("r")


def test_delta_outputs_carry_only_what_is_new(builder: RequestBuilder) -> None:
    processor = OutputProcessor(builder.tokenizer)
    processor.add_request("d", _build(builder, "d", output_kind=RequestOutputKind.DELTA))
    texts = []
    for i, word in enumerate([" red", " green", " blue"]):
        status = LENGTH if i == 2 else 0
        (out,), _ = processor.process(
            [EngineCoreOutput("d", _ids(builder, word), finish_status=status)]
        )
        assert isinstance(out, RequestOutput)
        texts.append(out.outputs[0].text)
    assert texts == [" red", " green", " blue"]


def test_final_only_emits_once(builder: RequestBuilder) -> None:
    processor = OutputProcessor(builder.tokenizer)
    processor.add_request("f", _build(builder, "f", output_kind=RequestOutputKind.FINAL_ONLY))
    assert processor.process([EngineCoreOutput("f", _ids(builder, " a"))])[0] == []
    (out,), _ = processor.process(
        [EngineCoreOutput("f", _ids(builder, " b"), finish_status=STOPPED, stop_reason=7)]
    )
    assert isinstance(out, RequestOutput)
    assert out.outputs[0].text == " a b" and out.outputs[0].stop_reason == 7


def test_stop_string_stops_the_child_and_drops_later_tokens(builder: RequestBuilder) -> None:
    processor = OutputProcessor(builder.tokenizer)
    processor.add_request("s", _build(builder, "s", stop=["STOP"]))
    (out,), stopped = processor.process(
        [EngineCoreOutput("s", _ids(builder, " go on STOP and more"))]
    )
    assert stopped == ["s"]  # the caller tells the core to stop it
    assert isinstance(out, RequestOutput) and out.finished
    assert out.outputs[0].text == " go on " and out.outputs[0].stop_reason == "STOP"
    late = processor.process([EngineCoreOutput("s", _ids(builder, " late"))])
    assert late == ([], [])  # the core's tokens after the stop are dropped


def test_core_timestamps_and_errors(builder: RequestBuilder) -> None:
    processor = OutputProcessor(builder.tokenizer)
    processor.add_request("m", _build(builder, "m"))
    first = EngineCoreOutput(
        "m", _ids(builder, " x"), first_scheduled_time=1001.0, first_token_time=1002.0
    )
    processor.process([first])
    error = EngineCoreOutput("m", [], finish_status=int(RequestStatus.FINISHED_ERROR))
    (out,), _ = processor.process([error])
    assert isinstance(out, RequestOutput) and out.metrics is not None
    assert out.metrics.arrival_time == 1000.0
    assert (out.metrics.first_scheduled_time, out.metrics.first_token_time) == (1001.0, 1002.0)
    assert out.outputs[0].finish_reason == "error" and out.outputs[0].stop_reason is None


def test_abort_forgets_the_request(builder: RequestBuilder) -> None:
    processor = OutputProcessor(builder.tokenizer)
    processor.add_request("x", _build(builder, "x", n=3))
    assert processor.abort("x") == ["0_x", "1_x", "2_x"]  # for the core to abort
    assert not processor.has_request("x") and processor.child_to_parent == {}
    assert processor.process([EngineCoreOutput("0_x", [5])]) == ([], [])


def test_pooled_output() -> None:
    processor = OutputProcessor(None)
    child = EngineCoreRequest("p", [1, 2, 3], None, PoolingParams(), 5.0)
    built = BuiltRequest("t", [1, 2, 3], PoolingParams(), [child])
    processor.add_request("p", built)
    (out,), _ = processor.process(
        [EngineCoreOutput("p", [], finish_status=STOPPED, pooled=[0.5, 0.25])]
    )
    assert isinstance(out, PoolingRequestOutput) and out.outputs.embedding == [0.5, 0.25]
    assert not processor.has_request("p")


def test_builder_fans_out_n_with_seeds(builder: RequestBuilder) -> None:
    built = builder.build("q", "Hi", SamplingParams(n=3, seed=10, max_tokens=5), 0.0)
    assert [c.request_id for c in built.children] == ["0_q", "1_q", "2_q"]
    seeds = [c.sampling_params.seed for c in built.children if c.sampling_params]
    assert seeds == [10, 11, 12]
    assert all(c.max_tokens == 5 and c.stream_outputs for c in built.children)
    final = SamplingParams(max_tokens=5, output_kind=RequestOutputKind.FINAL_ONLY)
    assert not builder.build("f", "Hi", final, 0.0).children[0].stream_outputs  # sent at the end
    final.stop = ["."]
    assert builder.build("g", "Hi", final, 0.0).children[0].stream_outputs  # stop strings
    with pytest.raises(ValueError, match="prompt"):
        builder.build("e", {"prompt_token_ids": []}, SamplingParams(), 0.0)
