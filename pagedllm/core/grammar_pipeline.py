"""Structured outputs under async scheduling: the grammar work off the core's path.

Step N+1 of a constrained batch samples under a bitmask that needs step N's tokens
in the grammars. Done in line, the core's one thread ran, per step: schedule N+1,
launch its forward pass, wait for N's tokens, advance the grammars, fill N+1's
bitmask, launch N+1's sampling, and only then schedule N+2: the device sat idle
through the grammar work and the next schedule (issue #17: T1 lost 37% of its
throughput when every request was constrained).

Here one worker thread waits for step N's tokens and advances the grammars by them
while the core schedules step N+1, then fills N+1's bitmask while the core launches
N+1's forward pass. llguidance does both on its own threads without the GIL. The core
joins before it samples step N+1, then applies step N's output with the advance
already done (`PrefetchedOutput.grammars_advanced`, which `check_grammar_stops` uses
instead of advancing again).

The grammars advanced are those of step N's sampled rows whose request is still
known to the scheduler, by exactly the tokens `update_from_output` then appends; one
that `update_from_output` finishes for another reason (EOS, length) took a token it
did not need, which is harmless: its grammar goes with it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pagedllm.core.stop_checker import accept_grammar_tokens
from pagedllm.scheduler_output import ModelRunnerOutput
from pagedllm.structured_output import StructuredOutputManager
from pagedllm.structured_output.backend_types import StructuredOutputGrammar


@dataclass
class GrammarRow:
    """A sampled row of the step in flight (its index in the step's scheduled list)
    whose request samples under this grammar."""

    index: int
    req_id: str
    grammar: StructuredOutputGrammar


class PrefetchedOutput:
    """A launched step's result whose output the grammar thread waits for; `get()` as
    the executor's result, `grammars_advanced` once it has returned."""

    def __init__(self, future: Future[tuple[ModelRunnerOutput, dict[str, bool]]]) -> None:
        self._future = future

    def get(self) -> ModelRunnerOutput:
        return self._future.result()[0]  # re-raises the executor's error

    def done(self) -> bool:
        return self._future.done()

    @property
    def grammars_advanced(self) -> dict[str, bool]:
        return self._future.result()[1]


class GrammarPipeline:
    def __init__(self, manager: StructuredOutputManager) -> None:
        self.manager = manager
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pagedllm-grammar")

    def advance(self, result: Any, rows: list[GrammarRow]) -> PrefetchedOutput:
        """Start waiting for `result` (an executor result: `.get()`) and advancing the
        rows' grammars by their sampled tokens."""
        return PrefetchedOutput(self._thread.submit(_wait_and_advance, result, rows))

    def fill(self, grammars: list[StructuredOutputGrammar]) -> Future[np.ndarray]:
        """The bitmask of `grammars`, filled after the advance started before it."""
        return self._thread.submit(self.manager.grammar_bitmask, grammars)

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _wait_and_advance(
    result: Any, rows: list[GrammarRow]
) -> tuple[ModelRunnerOutput, dict[str, bool]]:
    output: ModelRunnerOutput = result.get()
    tokens = output.sampled_token_ids
    sampled = [(row, token) for row in rows if (token := tokens[row.index]) is not None]
    accepted = accept_grammar_tokens([(row.grammar, token) for row, token in sampled])
    return output, {row.req_id: ok for (row, _), ok in zip(sampled, accepted)}
