"""parallel_state in one process: the layer split of pipeline stages, identity
collectives when nothing is initialized, and NVLink multicast kept off."""

from __future__ import annotations

import os

import pytest
import torch

from pagedllm.distributed import parallel_state as ps
from pagedllm.executor.multiproc import get_open_port
from pagedllm.models.pipeline import IntermediateTensors, PPMissingLayer, make_layers


@pytest.mark.parametrize(
    ("num_layers", "pp", "ranges"),
    [
        (4, 2, [(0, 2), (2, 4)]),
        (3, 2, [(0, 2), (2, 3)]),
        (7, 3, [(0, 3), (3, 5), (5, 7)]),
        (2, 2, [(0, 1), (1, 2)]),
    ],
)
def test_pp_indices_cover_every_layer_once(
    num_layers: int, pp: int, ranges: list[tuple[int, int]]
) -> None:
    assert [ps.get_pp_indices(num_layers, r, pp) for r in range(pp)] == ranges


def test_more_stages_than_layers_is_an_error() -> None:
    with pytest.raises(ValueError, match="larger than the number of layers"):
        ps.get_pp_indices(2, 0, 3)


def test_single_process_defaults_are_identity() -> None:
    x = torch.arange(6.0).view(2, 3)
    assert ps.tensor_model_parallel_all_reduce(x) is x
    assert ps.tensor_model_parallel_all_gather(x) is x
    assert ps.is_pipeline_first_stage() and ps.is_pipeline_last_stage()
    assert ps.output_rank(tp_size=1, pp_size=1) == 0
    start, end, layers = make_layers(3, lambda i: torch.nn.Linear(2, 2))
    assert (start, end) == (0, 3) and not any(isinstance(m, PPMissingLayer) for m in layers)


def test_output_rank_is_tp_rank_0_of_the_last_stage() -> None:
    assert ps.output_rank(tp_size=2, pp_size=1) == 0
    assert ps.output_rank(tp_size=2, pp_size=3) == 4
    assert ps.output_rank(tp_size=1, pp_size=2) == 1


def test_intermediate_tensors_wire_order() -> None:
    h, r = torch.zeros(2, 4), torch.ones(2, 4)
    assert IntermediateTensors(h, r).tensors() == [h, r]
    assert IntermediateTensors(h).tensors() == [h]


def test_init_keeps_nvlink_multicast_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    ps.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{get_open_port()}", "gloo")
    try:
        assert os.environ["NCCL_NVLS_ENABLE"] == "0"
        ps.initialize_model_parallel(1, 1)
        assert not ps.model_parallel_is_initialized()  # world 1: no groups at all
    finally:
        ps.destroy_distributed_environment()
