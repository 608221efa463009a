"""The parallel split is checked once, when the EngineConfig is built (before any
executor or worker exists), with the messages the executors used to give."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pagedllm.config import EngineArgs
from pagedllm.config_parallel import (
    verify_pipeline_parallel,
    verify_tensor_parallel,
    verify_visible_devices,
)
from pagedllm.engine_config import ModelConfig, ParallelConfig


def _model_config(**hf: Any) -> ModelConfig:
    hf_config = SimpleNamespace(architectures=["LlamaForCausalLM"], **hf)
    return ModelConfig(
        model="m", tokenizer="m", hf_config=hf_config, dtype=torch.float32, max_model_len=64,
        seed=0, trust_remote_code=False, load_format="auto", quantization=None,
        served_model_name="m", runner="generate",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("parallel", "message"),
    [
        (dict(tensor_parallel_size=3), r"num_attention_heads \(4\) must be divisible"),
        (dict(tensor_parallel_size=8), r"num_attention_heads \(4\) must be divisible"),
        (dict(pipeline_parallel_size=3), r"pipeline_parallel_size \(3\) is larger"),
    ],
)
def test_the_builder_refuses_an_impossible_split(
    tiny_llama_dir: str, parallel: dict[str, int], message: str
) -> None:
    args = EngineArgs(model=tiny_llama_dir, device="cpu", **parallel)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        args.create_engine_config()


def test_the_builder_accepts_a_possible_split(tiny_llama_dir: str) -> None:
    config = EngineArgs(
        model=tiny_llama_dir, device="cpu", tensor_parallel_size=2, pipeline_parallel_size=2
    ).create_engine_config()
    assert config.parallel_config.world_size == 4


def test_kv_heads_must_divide_tp_or_be_divided_by_it() -> None:
    mc = _model_config(num_attention_heads=6, num_key_value_heads=3, intermediate_size=96)
    verify_tensor_parallel(mc, 3)
    verify_tensor_parallel(mc, 6)  # each kv head on two ranks
    with pytest.raises(ValueError, match=r"num_key_value_heads \(3\)"):
        verify_tensor_parallel(mc, 2)


def test_chatglm_intermediate_size_is_ffn_hidden_size() -> None:
    mc = _model_config(num_attention_heads=4, multi_query_attention=False, ffn_hidden_size=6)
    assert mc.intermediate_size == 6
    verify_tensor_parallel(mc, 2)
    with pytest.raises(ValueError, match=r"intermediate_size \(6\) must be divisible"):
        verify_tensor_parallel(mc, 4)


def test_more_stages_than_layers() -> None:
    mc = _model_config(num_hidden_layers=2)
    verify_pipeline_parallel(mc, 2)
    with pytest.raises(ValueError, match=r"pipeline_parallel_size \(3\) is larger"):
        verify_pipeline_parallel(mc, 3)


def test_mp_ranks_need_that_many_visible_gpus() -> None:
    pc = ParallelConfig(tensor_parallel_size=torch.cuda.device_count() + 1)
    pc.distributed_executor_backend = "mp"
    verify_visible_devices(pc, torch.device("cpu"))  # CPU ranks: no GPU needed
    with pytest.raises(ValueError, match=r"GPUs but only \d+ are visible"):
        verify_visible_devices(pc, torch.device("cuda"))
    pc.distributed_executor_backend = "ray"  # Ray places ranks across its cluster
    verify_visible_devices(pc, torch.device("cuda"))
