"""Piecewise CUDA graphs for the steps the decode graphs cannot take: prefill chunks,
prefills mixed with decodes, and decode batches past the largest decode graph.
On by default with CUDA graphs; `PAGEDLLM_PIECEWISE_GRAPHS=0` turns them off.

An eager step pays the host time of every launch in every layer (about 10 ms for
Qwen3-0.6B's 28 layers, whatever the token count), during which the decodes that
share the step wait. Here the model runs as one graph per stretch between two
attention calls, captured per token bucket T, and attention runs eagerly between
the replays, on the step's real sequence lengths:

    graph 0: embed, layer 0 up to attention  ->  Q/K/V (static)
    attention of layer 0 (eager)              ->  attn_out (static)
    graph 1: layer 0 after attention, layer 1 up to attention  ->  Q/K/V
    ...
    graph L: layer L-1 after attention, final norm  ->  hidden_out (static)

Token t < n of the step is row t of the static inputs; rows n..T are padding (token
0 at position 0, KV slot -1: nothing written; no sequence covers them, so attention
leaves zeros there). Everything but attention works row by row, so padding never
reaches a real row.

Shapes of the static buffers (T_max = the largest bucket):
    input_ids, positions [T_max] int64; slot_mapping [T_max] int64
    q_buf [T_max, nh*hd], k_buf / v_buf [T_max, nkv*hd], attn_out [T_max, nh*hd]
    hidden_out [T_max, hidden]
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pagedllm.layers.attention.graph_break import break_at_attention
from pagedllm.layers.attention.layer import Attention
from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.worker.input_prep import StepInputs

if TYPE_CHECKING:
    from pagedllm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def token_buckets(max_num_batched_tokens: int) -> list[int]:
    """16 .. 512 by doubling, then every 256 up to 2048, then every 512: a step of n
    tokens runs at the smallest bucket >= n (at most about a quarter more rows)."""
    sizes = [16, 32, 64, 128, 256, 512] + list(range(768, 2049, 256))
    sizes += list(range(2560, max(max_num_batched_tokens, 2560) + 1, 512))
    fitting = [s for s in sizes if s < max_num_batched_tokens]
    return fitting + [max_num_batched_tokens]


@dataclass
class _Pieces:
    """One bucket's graphs and, between graph i and i+1, attention layer i."""

    graphs: list[torch.cuda.CUDAGraph] = field(default_factory=list)
    layers: list[tuple[Attention, torch.Tensor | None]] = field(default_factory=list)


class PiecewiseGraphRunner:
    def __init__(self, runner: ModelRunner, attention: Attention) -> None:
        self.runner = runner
        self.sizes = token_buckets(runner.config.scheduler_config.max_num_batched_tokens)
        t_max = self.sizes[-1]
        device, dtype = runner.device, runner.config.model_config.dtype
        self.input_ids = torch.zeros(t_max, dtype=torch.int64, device=device)
        self.positions = torch.zeros(t_max, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((t_max,), -1, dtype=torch.int64, device=device)
        q_width = attention.num_heads * attention.head_dim
        kv_width = attention.num_kv_heads * attention.head_dim
        self.q_buf = torch.zeros((t_max, q_width), dtype=dtype, device=device)
        self.k_buf = torch.zeros((t_max, kv_width), dtype=dtype, device=device)
        self.v_buf = torch.zeros((t_max, kv_width), dtype=dtype, device=device)
        self.attn_out = torch.zeros((t_max, q_width), dtype=dtype, device=device)
        self.hidden_out: torch.Tensor | None = None  # [t_max, hidden], set by the first capture
        self.pieces: dict[int, _Pieces] = {}
        self.num_replays = 0  # steps run through the pieces (tests check they ran)
        self.pool: Any = None
        self._capturing: _Pieces | None = None
        self._stream = torch.cuda.Stream(device=device)

    @classmethod
    def for_model(cls, runner: ModelRunner) -> PiecewiseGraphRunner | None:
        """None when the attention layers differ in shape (one set of buffers serves all)."""
        layers = [m for m in runner.model.modules() if isinstance(m, Attention)]  # type: ignore[union-attr]
        shapes = {(a.num_heads, a.num_kv_heads, a.head_dim) for a in layers}
        if len(shapes) != 1:
            return None
        return cls(runner, layers[0])

    # ---- capture ------------------------------------------------------------------
    @torch.inference_mode()
    def capture(self) -> None:
        for size in reversed(self.sizes):  # largest first: smaller ones reuse its pool
            self._warm_up(size)
            self._capture(size)
        torch.cuda.synchronize()
        logger.info(
            "Captured piecewise CUDA graphs for %d token buckets up to %d",
            len(self.sizes),
            self.sizes[-1],
        )

    def _warm_up(self, size: int) -> None:
        """Run the pieces once outside any capture (Triton compiles its kernels here)."""

        def skip_attention(layer: Attention, q: Any, k: Any, v: Any, kv_cache: Any) -> torch.Tensor:
            return self.attn_out[: q.shape[0]]

        with break_at_attention(skip_attention):
            hidden = self._model_forward(size, _capture_metadata(size, self.slot_mapping))
        if self.hidden_out is None:
            shape = (self.sizes[-1], *hidden.shape[1:])
            self.hidden_out = torch.zeros(shape, dtype=hidden.dtype, device=hidden.device)
        torch.cuda.synchronize()

    def _capture(self, size: int) -> None:
        try:
            self._capture_pieces(size)
        except BaseException:
            self._abandon_capture()
            raise

    def _abandon_capture(self) -> None:
        """End a capture that failed half-way (a stream left capturing breaks every
        later launch)."""
        if self._capturing is not None and self._capturing.graphs:
            try:
                self._capturing.graphs[-1].capture_end()
            except RuntimeError:
                pass
        self._capturing = None
        torch.cuda.synchronize()

    def _capture_pieces(self, size: int) -> None:
        pieces = _Pieces()
        self._capturing = pieces
        metadata = _capture_metadata(size, self.slot_mapping)  # no host copies while capturing
        torch.cuda.synchronize()
        with torch.cuda.stream(self._stream), break_at_attention(self._break):
            self._begin_graph()
            hidden = self._model_forward(size, metadata)
            assert self.hidden_out is not None
            self.hidden_out[:size].copy_(hidden)
            pieces.graphs[-1].capture_end()
        torch.cuda.synchronize()
        self._capturing = None
        self.pieces[size] = pieces

    def _begin_graph(self) -> None:
        assert self._capturing is not None
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()  # one pool for every piece
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=self.pool)
        self._capturing.graphs.append(graph)

    def _break(
        self, layer: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: Any
    ) -> torch.Tensor:
        """End the current graph after it has put q/k/v in the static buffers; the
        next graph starts from attn_out."""
        assert self._capturing is not None
        size = q.shape[0]
        self.q_buf[:size].copy_(q)
        self.k_buf[:size].copy_(k)
        self.v_buf[:size].copy_(v)
        self._capturing.graphs[-1].capture_end()
        self._capturing.layers.append((layer, kv_cache))
        self._begin_graph()
        return self.attn_out[:size]

    def _model_forward(self, size: int, metadata: AttentionMetadata) -> torch.Tensor:
        model = self.runner.model
        assert model is not None
        out = model(self.input_ids[:size], self.positions[:size], self.runner.kv_caches, metadata)
        assert isinstance(out, torch.Tensor)
        return out

    # ---- replay -------------------------------------------------------------------
    def can_run(self, inputs: StepInputs) -> bool:
        return inputs.num_tokens <= self.sizes[-1]

    def run(self, inputs: StepInputs) -> tuple[torch.Tensor, None]:
        """Hidden states of the step's tokens (a view of hidden_out: valid until the
        next replay); no logits (the runner computes the sampled rows' logits)."""
        n = inputs.num_tokens
        size = next(s for s in self.sizes if s >= n)
        md = inputs.attn_metadata
        self.input_ids[:n].copy_(inputs.input_ids, non_blocking=True)
        self.input_ids[n:size].zero_()
        self.positions[:n].copy_(inputs.positions, non_blocking=True)
        self.positions[n:size].zero_()
        self.slot_mapping[:n].copy_(md.slot_mapping, non_blocking=True)
        self.slot_mapping[n:size].fill_(-1)
        padded = dataclasses.replace(md, slot_mapping=self.slot_mapping[:size])
        pieces = self.pieces[size]
        self.num_replays += 1
        for i, graph in enumerate(pieces.graphs):
            graph.replay()
            if i < len(pieces.layers):
                self._attend(pieces.layers[i], size, padded)
        assert self.hidden_out is not None
        return self.hidden_out[:n], None

    def _attend(
        self, layer_and_cache: tuple[Attention, Any], size: int, metadata: AttentionMetadata
    ) -> None:
        layer, kv_cache = layer_and_cache
        out = layer.attend(
            self.q_buf[:size], self.k_buf[:size], self.v_buf[:size], kv_cache, metadata
        )
        self.attn_out[:size].copy_(out)


def _capture_metadata(size: int, slot_mapping: torch.Tensor) -> AttentionMetadata:
    """What the model sees while the pieces are captured: shapes only (attention does
    not run then); one sequence of `size` tokens whose keys are not written."""
    device = slot_mapping.device
    return AttentionMetadata(
        num_actual_tokens=size,
        max_query_len=size,
        max_seq_len=size,
        query_start_loc=torch.tensor([0, size], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([size], dtype=torch.int32, device=device),
        block_tables=torch.zeros((1, 1), dtype=torch.int32, device=device),
        slot_mapping=slot_mapping[:size],
    )
