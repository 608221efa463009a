"""EngineArgs validation and the derived EngineConfig."""

from __future__ import annotations

import pytest
import torch

from pagedllm.config import EngineArgs
from pagedllm.config_builder import _pick_dtype, cpu_has_fast_bfloat16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_size=3), "block_size"),
        (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
        (dict(dtype="float64"), "dtype"),
        (dict(load_format="zip"), "load_format"),
        (dict(tensor_parallel_size=0), "tensor_parallel_size"),
        (dict(device="tpu"), "device"),
        (dict(distributed_executor_backend="mpi"), "distributed_executor_backend"),
    ],
)
def test_invalid_arguments_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EngineArgs(**kwargs).validate()  # type: ignore[arg-type]


def test_cpu_dtype_defaults() -> None:
    cpu = torch.device("cpu")
    assert _pick_dtype("auto", None, cpu) == torch.float32  # GGUF / unknown: exact float32
    assert _pick_dtype("auto", torch.float16, cpu) == torch.float32
    expected = torch.bfloat16 if cpu_has_fast_bfloat16() else torch.float32
    assert _pick_dtype("auto", torch.bfloat16, cpu) == expected
    assert _pick_dtype("half", None, cpu) == torch.float16
    assert _pick_dtype("auto", None, torch.device("cuda")) == torch.bfloat16


def test_max_model_len_larger_than_the_model_is_an_error(tiny_llama_dir: str) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        EngineArgs(model=tiny_llama_dir, max_model_len=10**6, device="cpu").create_engine_config()
