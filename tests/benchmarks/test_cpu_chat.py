"""`pagedllm bench cpu-chat` runs the embedded model kept quantized and dequantized in
one command and reports both (llama.cpp's peer needs llama-cpp-python: not here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pagedllm.benchmarks import cpu_chat


@pytest.mark.timeout(900)
def test_cpu_chat_quantized_and_float32(tmp_path: Path) -> None:
    out = tmp_path / "c1.json"
    argv = ["--max-tokens", "3", "--batches", "32", "--quantization", "auto,none"]
    results = cpu_chat.main([*argv, "--output-json", str(out)])
    assert [r["quantization"] for r in results] == ["gguf", "none"]
    assert all(r["output_tokens"] == 32 * 3 and r["engine"] == "pagedllm" for r in results)
    assert json.loads(out.read_text())


def test_llama_cpp_peer_missing_is_a_clear_error() -> None:
    pytest.importorskip("pagedllm.benchmarks.llama_cpp_peer")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        from pagedllm.benchmarks.llama_cpp_peer import run_llama_cpp

        with pytest.raises(ValueError, match="llama-cpp-python"):
            run_llama_cpp("x.gguf", ["hi"], 1)
    else:
        pytest.skip("llama-cpp-python is installed")
