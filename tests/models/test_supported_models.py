"""The README's supported-model table is the registry's, generated: it cannot drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pagedllm.model_loader.registry import supported_architectures
from pagedllm.models.supported_models import BEGIN, END, MODEL_INFO, markdown_table, replace_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_registered_architecture_is_described() -> None:
    assert sorted(MODEL_INFO) == supported_architectures()


def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    assert replace_table(text, markdown_table()) == text, (
        "README's model table is stale: run python -m pagedllm.models.supported_models "
        "--write README.md"
    )


def test_table_has_one_row_per_architecture() -> None:
    rows = markdown_table().splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == supported_architectures()
    assert "| `ChatGLMModel` |" in markdown_table()
    assert "| `BertModel` | BERT, sentence-transformers |" in markdown_table()


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\nbefore\n\n{BEGIN}\n| old | table |\n{END}\n\nafter\n")
    subprocess.run(
        [sys.executable, "-m", "pagedllm.models.supported_models", "--write", str(doc)],
        check=True,
    )
    assert doc.read_text() == f"# Title\n\nbefore\n\n{BEGIN}\n{markdown_table()}{END}\n\nafter\n"
    printed = subprocess.run(
        [sys.executable, "-m", "pagedllm.models.supported_models"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert printed == markdown_table()
