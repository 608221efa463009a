"""Workload S1's model directory: a word-level fast tokenizer where N words are N ids
(no BOS), decoding joins words with spaces, ids 0-2 are special; and the random
dataset of `bench serve` over it (exact lengths, seeded)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from pagedllm.benchmarks.serve_dataset import length_range, sample_random_requests
from pagedllm.benchmarks.word_model import write_word_model


@pytest.fixture(scope="module")
def s1_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_word_model(str(tmp_path_factory.mktemp("s1") / "model"))


@pytest.fixture(scope="module")
def tokenizer(s1_dir: str) -> Any:
    return AutoTokenizer.from_pretrained(s1_dir)


def test_config_is_the_qwen3_shape_with_special_ids(s1_dir: str) -> None:
    config = json.loads((Path(s1_dir) / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["vocab_size"] == 151936
    assert config["num_hidden_layers"] == 28 and config["hidden_size"] == 1024
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    generation = json.loads((Path(s1_dir) / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    assert not list(Path(s1_dir).glob("*.safetensors"))  # served with load_format="dummy"


def test_n_words_are_n_ids_and_round_trip(tokenizer: Any) -> None:
    assert tokenizer.is_fast and len(tokenizer) == 151936
    rng = random.Random(0)
    ids = [rng.randint(3, 151935) for _ in range(1024)]
    text = " ".join(f"t{i}" for i in ids)
    assert tokenizer(text).input_ids == ids  # no BOS, even with special tokens on
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("t3 t151935") == [3, 151935]
    assert tokenizer.convert_ids_to_tokens([3, 4]) == ["t3", "t4"]
    chat = [{"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert tokenizer(rendered).input_ids == ids  # a chat request of N words: N tokens


def test_ids_0_to_2_are_special(tokenizer: Any) -> None:
    assert sorted(tokenizer.all_special_ids) == [0, 1, 2]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert tokenizer.decode([1, 3, 2], skip_special_tokens=True) == "t3"
    assert tokenizer.encode("nonsense") == [0]  # an unknown word is <unk>


def test_random_prompts_have_exact_lengths(tokenizer: Any) -> None:
    requests = sample_random_requests(tokenizer, 5, 1024, 128, seed=0)
    for r in requests:
        assert r.prompt_len == len(r.prompt_token_ids) == len(r.prompt.split()) == 1024
        assert tokenizer.encode(r.prompt) == r.prompt_token_ids
        assert min(r.prompt_token_ids) >= 3 and r.expected_output_len == 128
    again = sample_random_requests(tokenizer, 5, 1024, 128, seed=0)
    assert [r.prompt for r in again] == [r.prompt for r in requests]
    other = sample_random_requests(tokenizer, 5, 1024, 128, seed=1)
    assert other[0].prompt != requests[0].prompt


def test_range_ratio_is_vllms(tokenizer: Any) -> None:
    assert length_range(100, 0.0, 1) == (100, 100)
    assert length_range(100, 0.5, 1) == (50, 150)
    with pytest.raises(ValueError, match="range-ratio"):
        length_range(100, 1.0, 1)
    requests = sample_random_requests(tokenizer, 200, 100, 20, range_ratio=0.5, seed=0)
    lens = [r.prompt_len for r in requests]
    outs = [r.expected_output_len for r in requests]
    assert 50 <= min(lens) < 60 and 140 < max(lens) <= 150
    assert 10 <= min(outs) and max(outs) <= 30
