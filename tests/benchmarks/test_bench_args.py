"""Every benchmark flag that names an engine argument reaches LLM(...)."""

from __future__ import annotations

import pytest

from pagedllm.benchmarks import latency, throughput
from pagedllm.benchmarks.workload import engine_kwargs
from pagedllm.config import EngineArgs


@pytest.mark.parametrize("module", [throughput, latency])
def test_engine_flags_are_forwarded(module: object) -> None:
    args = module.parse_args(
        ["--tensor-parallel-size", "2", "--enforce-eager", "--dtype", "float32"]
    )  # type: ignore[attr-defined]
    kwargs = engine_kwargs(args)
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["enforce_eager"] is True
    assert kwargs["dtype"] == "float32" and kwargs["skip_tokenizer_init"] is True
    engine_fields = set(EngineArgs.field_names())
    flags = {name for name in vars(args) if name in engine_fields}
    assert flags <= set(kwargs) | {name for name in flags if getattr(args, name) is None}
