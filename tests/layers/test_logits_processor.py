"""LogitsProcessor writing into a caller's buffer (what the decode CUDA graphs do)
gives the same logits as a fresh tensor, scale and soft cap included."""

from __future__ import annotations

import pytest
import torch

from pagedllm.layers.vocab_embedding import LogitsProcessor, ParallelLMHead
from pagedllm.worker.cuda_graphs import MAX_CAPTURE_SIZE, capture_sizes


@pytest.mark.parametrize(("scale", "soft_cap"), [(1.0, None), (0.5, None), (1.0, 3.0), (2.0, 5.0)])
def test_out_buffer_matches_new_tensor(scale: float, soft_cap: float | None) -> None:
    torch.manual_seed(0)
    head = ParallelLMHead(40, 16)
    torch.nn.init.normal_(head.weight)
    proc = LogitsProcessor(40, scale=scale, soft_cap=soft_cap)
    hidden = torch.randn(5, 16, dtype=torch.bfloat16)
    head.weight.data = head.weight.data.to(torch.bfloat16)
    expected = proc(head, hidden)
    buffer = torch.full((8, 40), float("nan"))
    got = proc(head, hidden, out=buffer[:5])
    assert got.data_ptr() == buffer.data_ptr()
    assert got.dtype == torch.float32
    torch.testing.assert_close(buffer[:5], expected)
    assert torch.isnan(buffer[5:]).all()  # rows past the batch untouched


def test_capture_sizes_stop_at_vllm_limit() -> None:
    assert capture_sizes(1024)[-1] == MAX_CAPTURE_SIZE == 512
    assert capture_sizes(256)[-1] == 256
    assert capture_sizes(3) == [1, 2]
    assert capture_sizes(300)[-1] == 288
