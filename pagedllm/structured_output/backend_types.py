"""The interface every grammar backend implements (llguidance, xgrammar).

Bitmask layout (both libraries share it): one row of ceil(V / 32) int32 words per
constrained request; bit j of word w allows token 32 * w + j (1 = allowed)."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class StructuredOutputKind(enum.Enum):
    JSON = "json"  # spec: the schema's JSON text
    JSON_OBJECT = "json_object"  # spec: ignored (any JSON object)
    REGEX = "regex"
    CHOICE = "choice"  # spec: a JSON list of the strings
    GRAMMAR = "grammar"  # spec: Lark, GBNF or EBNF text


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


class StructuredOutputGrammar(ABC):
    """One request's matcher: where it stands in its grammar."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar does not allow it."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """The grammar has ended (its end-of-sequence token was accepted)."""

    @classmethod
    def accept_tokens(cls, batch: Sequence[tuple[StructuredOutputGrammar, int]]) -> list[bool]:
        """accept_token for many grammars of this class at once, in order (a backend
        may spread them over its threads)."""
        return [grammar.accept_token(token) for grammar, token in batch]


class StructuredOutputBackend(ABC):
    """Compiles grammars for one tokenizer and fills bitmask rows."""

    @abstractmethod
    def compile_grammar(self, kind: StructuredOutputKind, spec: str) -> StructuredOutputGrammar:
        """A fresh matcher; raises ValueError for a grammar it cannot compile."""

    @abstractmethod
    def fill_bitmask(
        self, grammars: Sequence[tuple[StructuredOutputGrammar, int]], bitmask: np.ndarray
    ) -> None:
        """Write each grammar's allowed next tokens into its row of `bitmask`
        ([R, ceil(V / 32)] int32, C-contiguous)."""
