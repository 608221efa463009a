"""The README's Python examples, run in order in one namespace, as a user would."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_offline_examples_run(capsys) -> None:  # type: ignore[no-untyped-def]
    blocks = python_blocks()
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "Paris" in out  # greedy continuation is not asserted; the batch runs
    assert "tokens/s" in out and "assistant:" in out and "384" in out
    assert "\ufffd" not in out
