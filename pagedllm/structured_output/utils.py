"""Grammar texts shared by the backends."""

from __future__ import annotations

import json

# Rust regex (llguidance) and xgrammar both take these escaped; Python's re.escape
# escapes more than they accept (a space, for one).
_REGEX_META = set("\\.+*?()|[]{}^$")


def escape_regex(text: str) -> str:
    return "".join("\\" + c if c in _REGEX_META else c for c in text)


def choice_regex(choices_json: str) -> str:
    """`a|b|c` with every choice matched literally."""
    return "|".join(f"(?:{escape_regex(c)})" for c in json.loads(choices_json))


def choice_ebnf(choices_json: str) -> str:
    """EBNF (xgrammar's GBNF dialect) of one of the choices, as JSON string literals."""
    return "root ::= " + " | ".join(json.dumps(c) for c in json.loads(choices_json))


def is_lark(grammar: str) -> bool:
    """GBNF/EBNF rules use `::=`; Lark's use `:`."""
    return "::=" not in grammar
