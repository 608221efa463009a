"""The README's offline examples, run in order in one namespace, as a user would."""

from __future__ import annotations

import re

import pytest
from readme_blocks import README, code_blocks


def test_readme_offline_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = code_blocks("python", "Offline inference", "Embeddings")
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "Paris" in out
    assert "tokens/s" in out and "assistant:" in out and "384" in out
    assert "\ufffd" not in out
    sunny, trains = map(float, re.findall(r"^\[(\S+), (\S+)\]$", out, re.M)[-1])
    assert sunny > trains  # LLM.score's example
