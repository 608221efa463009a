"""A consumer that fell behind takes the queued deltas of its request as one output;
errors and aborts are never merged away."""

from __future__ import annotations

import asyncio

from pagedllm.engine.async_stream import RequestStream
from pagedllm.outputs import CompletionOutput, RequestOutput


def _delta(
    text: str, tokens: list[int], index: int = 0, finish: str | None = None
) -> RequestOutput:
    comp = CompletionOutput(index, text, tokens, None, None, finish_reason=finish)
    return RequestOutput("r", "p", [1], None, [comp], finished=finish is not None)


def test_queued_deltas_merge_into_one() -> None:
    async def main() -> list[object]:
        stream = RequestStream("r", asyncio.get_running_loop(), mergeable=True)
        for item in (
            _delta("a", [1]),
            _delta("b", [2]),
            _delta("x", [9], index=1),
            _delta("c", [3], finish="length"),
        ):
            stream.queue.put_nowait(item)
        return [await stream.get()]

    (merged,) = asyncio.run(main())
    assert isinstance(merged, RequestOutput) and merged.finished
    first, second = merged.outputs
    assert (first.index, first.text, first.token_ids, first.finish_reason) == (
        0,
        "abc",
        [1, 2, 3],
        "length",
    )
    assert (second.index, second.text, second.token_ids) == (1, "x", [9])


def test_error_after_outputs_is_kept_in_order() -> None:
    async def main() -> list[object]:
        stream = RequestStream("r", asyncio.get_running_loop(), mergeable=True)
        error = RuntimeError("failed")
        for item in (_delta("a", [1]), _delta("b", [2]), error, None):
            stream.queue.put_nowait(item)
        return [await stream.get(), await stream.get(), await stream.get()]

    merged, error, end = asyncio.run(main())
    assert isinstance(merged, RequestOutput) and merged.outputs[0].text == "ab"
    assert isinstance(error, RuntimeError) and end is None


def test_cumulative_outputs_are_not_merged() -> None:
    async def main() -> list[object]:
        stream = RequestStream("r", asyncio.get_running_loop())
        stream.queue.put_nowait(_delta("a", [1]))
        stream.queue.put_nowait(_delta("ab", [1, 2]))
        return [await stream.get(), await stream.get()]

    first, second = asyncio.run(main())
    assert isinstance(first, RequestOutput) and first.outputs[0].text == "a"
    assert isinstance(second, RequestOutput) and second.outputs[0].text == "ab"
