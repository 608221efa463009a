"""Integer arguments that change from step to step must not make Triton compile new
variants in the middle of a run (a compile costs the host a second or so). The
sampler's seed and split counts and the attention kernels' block-table row stride
are marked `do_not_specialize`; here, on the GPU, launches that vary them over every
class Triton specializes on (== 1, divisible by 16, other) add at most the variants
that their constexprs ask for."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _variants(kernel: Any) -> int:
    return sum(len(caches[0]) for caches in kernel.device_caches.values())


def test_sampler_compiles_once_per_split_mode() -> None:
    from pagedllm.layers.kernels import triton_gumbel_sample as g

    temperature = torch.ones(64, device="cuda")
    logits = torch.randn(64, 32000, device="cuda")
    g.gumbel_sample(logits[:3], temperature[:3], 5, num_splits=1)  # the S == 1 variant
    # The S > 1 variants; the reduce kernel's BLOCK_S (a constexpr, next power of two of
    # S) is 32 for every S below.
    g.gumbel_sample(logits[:3], temperature[:3], 5, num_splits=17)
    before = (_variants(g._gumbel_partial_kernel), _variants(g._gumbel_reduce_kernel))
    for n in (1, 5, 16, 17, 32, 64):
        for seed in (1, 16, 17, 2**31 - 1):
            for splits in (17, 32):  # chunks per split 2 and 1
                g.gumbel_sample(logits[:n], temperature[:n], seed, num_splits=splits)
    torch.cuda.synchronize()
    after = (_variants(g._gumbel_partial_kernel), _variants(g._gumbel_reduce_kernel))
    assert after == before


def test_attention_compiles_once_for_any_block_table_width() -> None:
    from pagedllm.layers.kernels import triton_decode_attention as d

    cache = torch.randn(2, 64, 16, 2, 128, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(4, 8, 128, device="cuda", dtype=torch.bfloat16)
    seq_lens = torch.tensor([5, 17, 1, 30], dtype=torch.int32, device="cuda")

    def run(width: int) -> None:
        tables = torch.arange(4 * width, device="cuda", dtype=torch.int32).view(4, width) % 64
        d.decode_attention(q, cache, tables, seq_lens, 0.1, num_splits=1)

    run(2)
    before = _variants(d._decode_partial_kernel)
    for width in (3, 16, 17, 32):
        run(width)
    torch.cuda.synchronize()
    assert _variants(d._decode_partial_kernel) == before
