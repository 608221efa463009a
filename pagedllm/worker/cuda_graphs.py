"""CUDA graphs for decode steps.

A decode-only step (one query token per sequence) of B sequences runs as the
replay of a graph captured for the smallest bucket >= B. Inputs are copied into
static buffers first; rows past B are padding (slot -1: nothing written; seq_len 0:
nothing read), so their outputs are garbage that nobody looks at.

The graph ends with the LM head (logits of every row): every row of a decode step is
sampled, and the head's matrix product then runs at the bucket's row count, one of a
few shapes loaded at capture, instead of at every batch size the run passes through
(a cuBLAS product at a row count not seen before costs host time, at worst a wait).

    static buffers   [0 ........ B) real rows | [B ...... bucket) padding
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.worker.input_prep import StepInputs

if TYPE_CHECKING:
    from pagedllm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


MAX_CAPTURE_SIZE = 512  # vLLM's default largest graph; larger decode steps run eagerly


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 256, then every 16 up to 512 (vLLM's buckets)."""
    sizes = [1, 2, 4] + list(range(8, 257, 8)) + list(range(272, MAX_CAPTURE_SIZE + 1, 16))
    return [s for s in sizes if s <= max_num_seqs] or [1]


class CudaGraphRunner:
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        config = runner.config
        self.sizes = capture_sizes(config.scheduler_config.max_num_seqs)
        self.max_bs = self.sizes[-1]
        self.max_seq_len = min(config.model_config.max_model_len, config.max_seq_len_to_capture)
        max_blocks = -(-config.model_config.max_model_len // runner.block_size)
        device = runner.device
        self.input_ids = torch.zeros(self.max_bs, dtype=torch.int64, device=device)
        self.positions = torch.zeros(self.max_bs, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((self.max_bs,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(self.max_bs, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((self.max_bs, max_blocks), dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(self.max_bs + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # Every graph writes its (hidden states, logits) into the first rows of these two
        # buffers (graphs serve generative models): one [max_bs, V] logits buffer in all,
        # not one per batch size (over a GiB at 8B shapes) held in the graphs' pool.
        self.hidden_out: torch.Tensor | None = None
        self.logits_out: torch.Tensor | None = None
        self.pool: Any = None  # the memory pool shared by every captured graph

    def _metadata(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_actual_tokens=bs,
            max_query_len=1,
            max_seq_len=self.max_seq_len,
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs],
            slot_mapping=self.slot_mapping[:bs],
        )

    def _forward(self, bs: int) -> None:
        model = self.runner.lm
        assert self.hidden_out is not None and self.logits_out is not None
        hidden = model(
            self.input_ids[:bs], self.positions[:bs], self.runner.kv_caches, self._metadata(bs)
        )
        assert isinstance(hidden, torch.Tensor)
        self.hidden_out[:bs].copy_(hidden)
        model.compute_logits(hidden, out=self.logits_out[:bs])

    def _allocate_outputs(self) -> None:
        """The shared output buffers, shaped by one eager step of the largest batch."""
        model = self.runner.lm
        bs = self.max_bs
        hidden = model(
            self.input_ids[:bs], self.positions[:bs], self.runner.kv_caches, self._metadata(bs)
        )
        assert isinstance(hidden, torch.Tensor)
        logits = model.compute_logits(hidden)
        self.hidden_out = torch.empty_like(hidden)
        self.logits_out = torch.empty_like(logits)

    @torch.inference_mode()
    def capture(self) -> None:
        self._allocate_outputs()
        # Largest first, so that smaller graphs reuse its memory pool.
        for bs in reversed(self.sizes):
            self._forward(bs)  # warm-up: Triton compiles outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._forward(bs)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()
        logger.info("Captured CUDA graphs for decode batch sizes %s", self.sizes)

    def can_run(self, inputs: StepInputs) -> bool:
        md = inputs.attn_metadata
        return (
            md.max_query_len == 1
            and md.num_seqs <= self.max_bs
            and md.max_seq_len <= self.max_seq_len
            and md.block_tables.shape[1] <= self.block_tables.shape[1]
        )

    def run(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states, logits) of the step's rows, views of the graph's static
        outputs: valid until the next replay."""
        md = inputs.attn_metadata
        n = md.num_seqs
        bs = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(inputs.input_ids, non_blocking=True)
        self.positions[:n].copy_(inputs.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(md.slot_mapping, non_blocking=True)
        self.slot_mapping[n:bs].fill_(-1)
        self.seq_lens[:n].copy_(md.seq_lens, non_blocking=True)
        self.seq_lens[n:bs].fill_(0)
        self.block_tables[:n, : md.block_tables.shape[1]].copy_(md.block_tables, non_blocking=True)
        self.graphs[bs].replay()
        assert self.hidden_out is not None and self.logits_out is not None
        return self.hidden_out[:n], self.logits_out[:n]
