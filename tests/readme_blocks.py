"""The README's code blocks, by section, for the tests that run them as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_text(title: str) -> str:
    """The text of the level-2 section `## {title}` up to the next level-2 heading."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def code_blocks(language: str, *titles: str) -> list[str]:
    blocks: list[str] = []
    for title in titles:
        blocks += re.findall(rf"```{language}\n(.*?)```", section_text(title), re.S)
    return blocks
