"""Flags generated from EngineArgs, the `pagedllm` subcommands (generate and chat on the
real embedded model, in process), chat templates and API-key resolution."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from pagedllm import SamplingParams
from pagedllm.config import EngineArgs
from pagedllm.entrypoints import cli
from pagedllm.entrypoints.chat_utils import load_chat_template
from pagedllm.entrypoints.cli_args import (
    engine_args_from_namespace,
    human_int,
    make_server_parser,
    sampling_params_from_namespace,
    served_model_names,
)
from pagedllm.entrypoints.openai.api_server import resolve_api_key


def test_every_engine_arg_is_a_flag_with_the_same_default() -> None:
    parser = make_server_parser()
    dests = {action.dest for action in parser._actions}
    assert set(EngineArgs.field_names()) <= dests
    assert engine_args_from_namespace(parser.parse_args([])) == EngineArgs()


def test_engine_flags_parse_like_vllm() -> None:
    argv = "--model m.gguf --max-model-len 2k --kv-cache-memory-bytes 256M -tp 2 --seed none"
    argv += " --no-enable-prefix-caching --enforce-eager --dtype half --pooling-normalize"
    argv += " --served-model-name first second --max-num-seqs 8 --gpu-memory-utilization 0.5"
    ns = make_server_parser().parse_args(argv.split())
    args = engine_args_from_namespace(ns)
    expected = {
        "model": "m.gguf",
        "max_model_len": 2000,
        "kv_cache_memory_bytes": 256 << 20,
        "tensor_parallel_size": 2,
        "seed": None,
        "enable_prefix_caching": False,
        "enforce_eager": True,
        "dtype": "half",
        "pooling_normalize": True,
        "served_model_name": "first",
        "max_num_seqs": 8,
        "gpu_memory_utilization": 0.5,
    }
    assert {k: getattr(args, k) for k in expected} == expected
    assert served_model_names(ns) == ["first", "second"]


@pytest.mark.parametrize(
    "argv", [["--dtype", "int3"], ["--max-num-seqs", "many"], ["--device", "tpu"]]
)
def test_bad_flags_exit(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        make_server_parser().parse_args(argv)


def test_human_int() -> None:
    assert [human_int(v) for v in ("2048", "2k", "2K", "1.5M", "1G")] == [
        2048,
        2000,
        2048,
        3 << 19,
        1 << 30,
    ]


def test_serve_takes_the_model_as_positional(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setitem(cli.COMMANDS, "serve", lambda ns: seen.update(vars(ns)))
    cli.main(["serve", "my/model", "--port", "9001", "--api-key", "k", "--max-model-len", "512"])
    assert seen["model"] == "my/model" and seen["port"] == 9001 and seen["api_key"] == "k"
    assert seen["max_model_len"] == 512


def test_bench_dispatches_to_the_benchmark_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    fake = types.ModuleType("fake_bench")
    fake.main = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setitem(cli.BENCHMARKS, "throughput", "fake_bench")
    cli.main(["bench", "throughput", "--num-prompts", "4"])
    assert calls == [["--num-prompts", "4"]]
    with pytest.raises(SystemExit):
        cli.main(["bench", "nonsense"])


def test_sampling_flags() -> None:
    parser = cli.make_parser()
    ns = parser.parse_args(
        "generate --prompt hi --temperature 0 --top-k 5 --stop x y --n 2".split()
    )
    params = sampling_params_from_namespace(ns)
    assert (params.temperature, params.top_k, params.stop, params.n) == (0.0, 0, ["x", "y"], 2)
    assert params.max_tokens == 64 and ns.prompt == ["hi"]


def test_generate_and_chat_commands(
    smol_llm: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_make_engine", lambda args: smol_llm.llm_engine)
    argv = ["generate", "--prompt", "The capital of France is", "--max-tokens", "4"]
    cli.main([*argv, "--temperature", "0"])
    assert "Paris" in capsys.readouterr().out
    question = "What is the capital of France?"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{question}\n/exit\n"))
    cli.main(["chat", "--max-tokens", "10", "--temperature", "0"])
    # The engine's own greedy answer (kept quantized on the CPU, the embedded model
    # answers this as llama.cpp does on the same file, not "Paris" as float32 does).
    sp = SamplingParams(temperature=0, max_tokens=10)
    expected = smol_llm.chat([{"role": "user", "content": question}], sp, use_tqdm=False)
    answer = expected[0].outputs[0].text.strip()
    assert answer and answer in capsys.readouterr().out


def test_console_script_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    for flag in ("--tensor-parallel-size", "--served-model-name", "--api-key", "--chat-template"):
        assert flag in result.stdout


def test_chat_template_file_or_string(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    path = tmp_path / "t.jinja"
    path.write_text(template)
    assert load_chat_template(str(path)) == template
    assert load_chat_template(template) == template
    assert load_chat_template(None) is None
    with pytest.raises(ValueError, match="neither a file"):
        load_chat_template(str(tmp_path / "missing.jinja"))


def test_api_key_from_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGEDLLM_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    assert resolve_api_key(None) is None
    monkeypatch.setenv("VLLM_API_KEY", "from-vllm")
    assert resolve_api_key(None) == "from-vllm"
    monkeypatch.setenv("PAGEDLLM_API_KEY", "from-pagedllm")
    assert resolve_api_key(None) == "from-pagedllm"
    assert resolve_api_key("flag") == "flag"


def test_engine_args_fields_are_dataclass_fields() -> None:
    # The flag generator relies on every field having a plain default.
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(EngineArgs))
