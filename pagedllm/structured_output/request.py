"""A constrained request's grammar as the engine core holds it: the spec taken from
its StructuredOutputsParams, and the grammar compiled for it on a thread pool."""

from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import dataclass, field

from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output.backend_types import (
    StructuredOutputGrammar,
    StructuredOutputKind,
)


def grammar_spec(params: StructuredOutputsParams) -> tuple[StructuredOutputKind, str]:
    """(kind, spec text) of the one constraint the params set."""
    kind = StructuredOutputKind(params.kind)
    if kind is StructuredOutputKind.JSON:
        schema = params.json
        return kind, schema if isinstance(schema, str) else json.dumps(schema)
    if kind is StructuredOutputKind.CHOICE:
        return kind, json.dumps(params.choice)
    if kind is StructuredOutputKind.JSON_OBJECT:
        return kind, ""
    spec = params.regex if kind is StructuredOutputKind.REGEX else params.grammar
    assert spec is not None
    return kind, spec


@dataclass(eq=False)
class StructuredOutputRequest:
    """Set on a Request by StructuredOutputManager.grammar_init; the scheduler keeps
    the request waiting until `is_ready` (compiled) and fails it if `error`."""

    params: StructuredOutputsParams
    future: Future[StructuredOutputGrammar]
    # The compiled grammar once read: the engine reads it for every constrained
    # request twice a step, and each Future call takes its lock (~1.5 us).
    _grammar: StructuredOutputGrammar | None = field(default=None, init=False, repr=False)

    @property
    def is_ready(self) -> bool:
        return self.future.done()

    @property
    def error(self) -> BaseException | None:
        return self.future.exception() if self.future.done() else None

    @property
    def grammar(self) -> StructuredOutputGrammar | None:
        if self._grammar is None:
            if not self.future.done() or self.future.exception() is not None:
                return None
            self._grammar = self.future.result()
        return self._grammar
