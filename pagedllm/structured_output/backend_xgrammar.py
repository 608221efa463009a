"""xgrammar (`--structured-outputs-config backend=xgrammar`, `pip install xgrammar`):
faster masks than llguidance (4-5 us against 15-20 us per request for a 49k
vocabulary), slower compilation, and a heavier install (apache-tvm-ffi, and triton,
torch and transformers as dependencies). `grammar` takes GBNF/EBNF here, not Lark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pagedllm.structured_output import tuning
from pagedllm.structured_output.backend_types import (
    StructuredOutputBackend,
    StructuredOutputGrammar,
    StructuredOutputKind,
)
from pagedllm.structured_output.utils import choice_ebnf


def _json_options(disable_any_whitespace: bool) -> dict[str, Any]:
    if disable_any_whitespace:
        return {"any_whitespace": False, "separators": (",", ":")}
    return {"any_whitespace": True}


def make_grammar(kind: StructuredOutputKind, spec: str, disable_any_whitespace: bool) -> Any:
    """An xgrammar.Grammar (tokenizer-free): raises for an invalid spec."""
    import xgrammar as xgr

    if kind is StructuredOutputKind.JSON:
        return xgr.Grammar.from_json_schema(spec, **_json_options(disable_any_whitespace))
    if kind is StructuredOutputKind.JSON_OBJECT:
        return xgr.Grammar.builtin_json_grammar()
    if kind is StructuredOutputKind.REGEX:
        return xgr.Grammar.from_regex(spec)
    if kind is StructuredOutputKind.CHOICE:
        return xgr.Grammar.from_ebnf(choice_ebnf(spec))
    return xgr.Grammar.from_ebnf(spec)


def grammar_error(kind: StructuredOutputKind, spec: str, disable_any_whitespace: bool) -> str:
    try:
        make_grammar(kind, spec, disable_any_whitespace)
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the reason
        return str(exc)
    return ""


class XgrammarGrammar(StructuredOutputGrammar):
    def __init__(self, matcher: Any, batch: Any) -> None:
        self.matcher = matcher  # xgrammar.GrammarMatcher
        self.batch = batch  # the backend's xgrammar.BatchGrammarMatcher

    def accept_token(self, token_id: int) -> bool:
        return bool(self.matcher.accept_token(token_id))

    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())

    @classmethod
    def accept_tokens(cls, batch: Sequence[tuple[StructuredOutputGrammar, int]]) -> list[bool]:
        grammars = [g for g, _ in batch if isinstance(g, XgrammarGrammar)]
        if len(grammars) < tuning.PARALLEL_FILL_MIN_ROWS or len(grammars) != len(batch):
            return super().accept_tokens(batch)
        matchers, tokens = [g.matcher for g in grammars], [t for _, t in batch]
        return [bool(ok) for ok in grammars[0].batch.batch_accept_token(matchers, tokens)]


class XgrammarBackend(StructuredOutputBackend):
    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_token_ids: list[int],
        disable_any_whitespace: bool,
    ) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=eos_token_ids or None
        )
        self.compiler = xgr.GrammarCompiler(info)
        self.disable_any_whitespace = disable_any_whitespace
        self.batch = xgr.BatchGrammarMatcher(max_threads="auto")  # fills rows on its threads

    def compile_grammar(self, kind: StructuredOutputKind, spec: str) -> StructuredOutputGrammar:
        import xgrammar as xgr

        try:
            grammar = make_grammar(kind, spec, self.disable_any_whitespace)
            compiled = self.compiler.compile_grammar(grammar)
        except Exception as exc:
            raise ValueError(str(exc)) from exc
        return XgrammarGrammar(xgr.GrammarMatcher(compiled), self.batch)

    def fill_bitmask(
        self, grammars: Sequence[tuple[StructuredOutputGrammar, int]], bitmask: np.ndarray
    ) -> None:
        target = torch.from_numpy(bitmask)  # shares the memory: xgrammar writes the rows
        matchers = [g.matcher for g, _ in grammars if isinstance(g, XgrammarGrammar)]
        rows = [row for g, row in grammars if isinstance(g, XgrammarGrammar)]
        if len(matchers) >= tuning.PARALLEL_FILL_MIN_ROWS:
            self.batch.batch_fill_next_token_bitmask(matchers, target, rows)
            return
        for matcher, row in zip(matchers, rows):
            matcher.fill_next_token_bitmask(target, row)
