"""--generation-config auto|vllm|FOLDER and --override-generation-config, as in vLLM:
which sampling defaults a request without its own values gets (offline and served),
max_new_tokens as a server-wide cap, and the model's EOS ids kept in every mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pagedllm import LLM
from pagedllm.config import EngineArgs
from pagedllm.entrypoints.cli import make_parser
from pagedllm.entrypoints.cli_args import engine_args_from_namespace
from pagedllm.entrypoints.openai.api_server import build_app

MODEL_VALUES = {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 7, "eos_token_id": 2}


def model_with_generation_config(tiny_llama_dir: str, tmp_path: Path) -> str:
    path = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, path)
    (path / "generation_config.json").write_text(json.dumps(MODEL_VALUES))
    return str(path)


def model_config(model: str, **kwargs: Any) -> Any:
    return EngineArgs(model=model, device="cpu", **kwargs).create_engine_config().model_config


def test_the_modes_and_the_override(tiny_llama_dir: str, tmp_path: Path) -> None:
    model = model_with_generation_config(tiny_llama_dir, tmp_path)
    auto = model_config(model)
    assert auto.default_sampling == {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 7}
    none = model_config(model, generation_config="vllm")
    assert none.default_sampling == {}
    assert none.generation_config["eos_token_id"] == 2  # the EOS ids still stop requests
    folder = tmp_path / "gen"
    folder.mkdir()
    (folder / "generation_config.json").write_text(json.dumps({"top_k": 5, "temperature": 0.3}))
    assert model_config(model, generation_config=str(folder)).default_sampling == {
        "top_k": 5,
        "temperature": 0.3,
    }
    override = {"temperature": 0.0, "min_p": 0.1}
    merged = model_config(model, override_generation_config=override).default_sampling
    assert merged == {"temperature": 0.0, "top_p": 0.9, "max_new_tokens": 7, "min_p": 0.1}
    only = model_config(model, generation_config="vllm", override_generation_config=override)
    assert only.default_sampling == override
    with pytest.raises(ValueError, match="generation_config must be 'auto', 'vllm' or a folder"):
        model_config(model, generation_config=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="override_generation_config must be a dict"):
        model_config(model, override_generation_config="temperature=0")
    with pytest.raises(ValueError, match="override_generation_config may set .* got 'temprature'"):
        model_config(model, override_generation_config={"temprature": 0.0})


def test_offline_defaults_follow_the_mode(tiny_llama_dir: str, tmp_path: Path) -> None:
    model = model_with_generation_config(tiny_llama_dir, tmp_path)
    base: dict[str, Any] = dict(device="cpu", skip_tokenizer_init=True, block_size=4)
    auto = LLM(model=model, **base).get_default_sampling_params()
    assert (auto.temperature, auto.top_p, auto.max_tokens) == (0.6, 0.9, 7)
    plain = LLM(model=model, generation_config="vllm", **base).get_default_sampling_params()
    assert (plain.temperature, plain.top_p, plain.max_tokens) == (1.0, 1.0, 16)


def test_cli_flags_parse() -> None:
    ns = make_parser().parse_args(
        [
            "serve",
            "--generation-config",
            "vllm",
            "--override-generation-config",
            '{"temperature": 0.5, "max_new_tokens": 9}',
        ]
    )
    args = engine_args_from_namespace(ns)
    assert args.generation_config == "vllm"
    assert args.override_generation_config == {"temperature": 0.5, "max_new_tokens": 9}
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "--override-generation-config", "[1, 2]"])


def test_served_requests_take_the_defaults_and_the_max_new_tokens_cap() -> None:
    args = EngineArgs(
        max_model_len=512,
        kv_cache_memory_bytes=64 << 20,
        override_generation_config={"temperature": 0.0, "max_new_tokens": 3},
    )
    body = {"prompt": "The capital of France is", "max_tokens": 10, "ignore_eos": True}
    with TestClient(build_app(args)) as client:
        outs = [client.post("/v1/completions", json=body).json() for _ in range(2)]
        chat = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "ignore_eos": True},
        ).json()
    assert [o["usage"]["completion_tokens"] for o in outs] == [3, 3]  # capped at 3, not 10
    assert outs[0]["choices"][0]["text"] == outs[1]["choices"][0]["text"]  # temperature 0
    assert chat["usage"]["completion_tokens"] == 3  # no max_tokens: the cap, not the context
