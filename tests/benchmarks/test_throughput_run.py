"""`pagedllm bench throughput --backend both` end to end on the CPU with a tiny model:
pagedllm and the HF transformers peer run the same requests in one command, every
request produces its tokens, the ratio to HF is reported, and the summary table reads
the JSON it wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_configs import save_tiny, tiny_configs  # noqa: E402

from pagedllm.benchmarks import summary, throughput  # noqa: E402


def test_both_backends_in_one_command(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    config = tiny_configs()["llama"]
    config.vocab_size = 10240  # the request generator draws token ids from [0, 10000]
    save_tiny(config, model)
    out = tmp_path / "t.json"
    results = throughput.main(
        [
            "--model",
            str(model),
            "--num-prompts",
            "6",
            "--input-len",
            "5,20",
            "--output-len",
            "3,9",
            "--backend",
            "both",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--max-model-len",
            "64",
            "--output-json",
            str(out),
        ]  # fmt: skip
    )
    paged, hf = results
    assert paged["backend"] == "pagedllm" and hf["backend"] == "hf-transformers"
    assert paged["output_tokens"] == hf["output_tokens"] == sum(
        r.output_len for r in throughput.resolve_workload(
            throughput.parse_args(["--num-prompts", "6", "--input-len", "5,20", "--output-len", "3,9"])
        )[1]
    )  # fmt: skip
    assert paged["ratio_to_hf"] == round(hf["elapsed_s"] / paged["elapsed_s"], 1)
    assert json.loads(out.read_text()) == results
    table = summary.markdown([str(out)])
    assert "| pagedllm | 6 |" in table and "| hf-transformers | 6 |" in table


def test_peer_needs_a_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        throughput.peer_config(str(tmp_path), "qwen3-0.6b")
    assert throughput.peer_config(None, "qwen3-0.6b")["model_type"] == "qwen3"


def test_summary_rejects_other_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="not a throughput or latency result"):
        summary.markdown([str(path)])
