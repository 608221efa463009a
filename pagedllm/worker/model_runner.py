"""The model runner: owns the model, the KV cache and the sampler of one device,
and turns a SchedulerOutput into a ModelRunnerOutput."""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from pagedllm.config import EngineConfig
from pagedllm.distributed import parallel_state as ps
from pagedllm.layers.grammar_bitmask import GrammarBitmask
from pagedllm.layers.host_to_device import pack_to_device
from pagedllm.layers.sampler import Sampler
from pagedllm.layers.sampling_metadata import SamplingMetadata
from pagedllm.models.interfaces import (
    ModelForCausalLM,
    SupportsForward,
    check_model,
    is_causal_lm,
    supports_pp,
)
from pagedllm.models.pipeline import IntermediateTensors
from pagedllm.scheduler_output import (
    ModelRunnerOutput,
    ScheduledRequest,
    SchedulerOutput,
)
from pagedllm.worker import kv_cache as kvc
from pagedllm.worker.async_output import AsyncModelRunnerOutput
from pagedllm.worker.input_prep import BlockTableBuffer, StepInputs, prepare_inputs
from pagedllm.worker.pool_step import pool_step
from pagedllm.worker.prompt_logprobs import add_prompt_logprobs
from pagedllm.worker.request_state import RequestStates

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig, device: torch.device | None = None) -> None:
        self.config = config
        self.device = device or config.device_config.device
        self.block_size = config.cache_config.block_size
        self.model: SupportsForward | None = None  # the model contract: models/interfaces.py
        self.kv_caches: list[torch.Tensor] = []
        self.kv_swapper: Any = None  # worker/kv_swap.py, with a CPU KV tier
        self.cpu_offloader: Any = None  # worker/cpu_offload.py, with cpu_offload_gb on CUDA
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        self.requests = RequestStates()  # each request's state, from the steps' deltas
        self.is_pooling = config.model_config.runner == "pooling"
        self.cuda_graphs: Any = None
        self.piecewise_graphs: Any = None  # worker/piecewise_graphs.py, on CUDA
        self.pooler: Any = None
        max_blocks = -(-config.model_config.max_model_len // self.block_size)
        self.block_tables = BlockTableBuffer(max_blocks)
        # The last step's sampled tokens (device) and each request's row in them.
        self.prev_sampled: torch.Tensor | None = None
        self.prev_rows: dict[str, int] = {}
        # A step launch_forward ran up to its logits: (scheduled, inputs, hidden, logits).
        self._to_sample: tuple[Any, StepInputs, torch.Tensor, torch.Tensor | None] | None = None
        # This process's pipeline stage (parallel_state is set before the runner is made).
        self.pp_size = ps.get_pipeline_model_parallel_world_size()
        self.is_first_stage = ps.is_pipeline_first_stage()
        self.is_last_stage = ps.is_pipeline_last_stage()
        # The activations this stage is still sending on, and their sends (pp > 1).
        self._pp_sending: tuple[list[Any], list[torch.Tensor]] = ([], [])

    # ---- set-up -------------------------------------------------------------
    def load_model(self) -> None:
        from pagedllm.layers.attention.selector import attach_attention_backend
        from pagedllm.model_loader.loader import get_model

        torch.manual_seed(self.config.model_config.seed)
        model = get_model(self.config.model_config, self.device)
        self.model = check_model(model, not self.is_pooling, self.pp_size > 1)
        attach_attention_backend(model, self.device)
        offload_gb = self.config.cache_config.cpu_offload_gb
        if offload_gb > 0 and self.device.type == "cuda":
            from pagedllm.worker.cpu_offload import CpuOffloader

            self.cpu_offloader = CpuOffloader.apply(model, int(offload_gb * (1 << 30)), self.device)
        if self.is_pooling:
            from pagedllm.model_loader.sentence_transformers import pooler_for_model

            # The runner owns the pooler, so decoder models pool too (LAST by default).
            self.pooler = pooler_for_model(self.config.model_config)

    @property
    def lm(self) -> ModelForCausalLM:
        """The model as a text generator (compute_logits; checked at load unless pooling)."""
        model = self.model
        assert model is not None and is_causal_lm(model)
        return model

    @property
    def num_attention_layers(self) -> int:
        """Attention layers this rank holds (its pipeline stage's only)."""
        from pagedllm.layers.attention.layer import Attention

        assert self.model is not None
        return sum(1 for m in self.model.modules() if isinstance(m, Attention))

    def kv_cache_spec(self, tp_size: int | None = None) -> kvc.KVCacheSpec:
        tp = tp_size or self.config.parallel_config.tensor_parallel_size
        return kvc.kv_cache_spec(self.config, self.num_attention_layers, tp)

    def determine_num_blocks(self, tp_size: int | None = None) -> int:
        spec = self.kv_cache_spec(tp_size)
        override = self.config.cache_config.num_gpu_blocks_override
        if override is not None:
            return override
        if self.device.type != "cuda":
            return kvc.cpu_num_blocks(self.config, spec)
        return kvc.gpu_num_blocks(self.config, spec, self.profile_peak_memory(), self.device)

    def profile_peak_memory(self) -> int:
        """Run a largest step on a throw-away cache; report the peak bytes in use."""
        from pagedllm.worker.profile import profile_run

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        profile_run(self)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.empty_cache()
        return int(peak)

    def initialize_kv_cache(self, num_blocks: int, tp_size: int | None = None) -> None:
        spec = self.kv_cache_spec(tp_size)
        kvc.check_fits(self.config, spec, num_blocks)
        self.kv_caches = kvc.allocate_kv_caches(spec, num_blocks, self.device)
        num_cpu_blocks = kvc.cpu_tier_num_blocks(self.config)
        if num_cpu_blocks and self.kv_caches:
            from pagedllm.worker.kv_swap import KVSwapper

            self.kv_swapper = KVSwapper(spec, num_cpu_blocks, self.kv_caches)
        # Graphs replay whole-model decode steps: not with activations sent between stages.
        graphs_ok = not self.config.enforce_eager and not self.is_pooling and self.pp_size == 1
        graphs_ok = graphs_ok and self.cpu_offloader is None  # weights move between buffers
        graphs_ok = graphs_ok and not self._needs_torch_attention()
        if self.device.type == "cuda" and graphs_ok:
            from pagedllm.worker.cuda_graphs import CudaGraphRunner

            self.cuda_graphs = CudaGraphRunner(self)
            self.cuda_graphs.capture()
            self._capture_piecewise()

    def _needs_torch_attention(self) -> bool:
        """Sliding-window / soft-capped layers (Gemma) on a backend without them attend
        through the torch fallback, which syncs with the host: no CUDA graphs then (the
        torch and Triton backends both take them, so this is for other backends)."""
        from pagedllm.layers.attention.layer import needs_torch_attention

        if self.model is None or not needs_torch_attention(cast(nn.Module, self.model)):
            return False
        logger.warning("Sliding-window/soft-capped attention runs the torch path: no CUDA graphs")
        return True

    def _capture_piecewise(self) -> None:
        """Graphs for the steps the decode graphs cannot take (on unless
        PAGEDLLM_PIECEWISE_GRAPHS=0): on an H200 they halved S1's TTFT at 20 requests/s
        and took its ITL p99 from 17-24 to 7.7 ms (docs/benchmarks.md)."""
        if os.environ.get("PAGEDLLM_PIECEWISE_GRAPHS", "1") == "0":
            return
        from pagedllm.worker.piecewise_graphs import PiecewiseGraphRunner

        pieces = PiecewiseGraphRunner.for_model(self)
        if pieces is None:
            return
        try:
            pieces.capture()
        except Exception:
            logger.warning("Piecewise CUDA graphs failed to capture: eager steps", exc_info=True)
            return
        self.piecewise_graphs = pieces

    # ---- one step ---------------------------------------------------------
    @torch.inference_mode()
    def execute_model(
        self, scheduler_output: SchedulerOutput
    ) -> ModelRunnerOutput | AsyncModelRunnerOutput:
        """Launch the step; `.get()` on the result waits for its tokens."""
        output = self.launch_forward(scheduler_output)
        if output is not None:
            return output
        so = scheduler_output
        return self.sample_tokens(so.grammar_bitmask, so.structured_output_request_ids)

    @torch.inference_mode()
    def launch_forward(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        """The step up to its logits. None when it has rows to sample: then
        `sample_tokens` (called before the next step) finishes it, so that the engine
        can fill the grammar bitmask while the device runs the forward pass.
        Otherwise the step's output (nothing scheduled, an earlier pipeline stage,
        pooling)."""
        for req_id in scheduler_output.finished_req_ids:
            self.generators.pop(req_id, None)
        self.block_tables.release(scheduler_output.finished_req_ids)
        scheduled = self.requests.update(scheduler_output)
        if self.kv_swapper is not None:
            self.kv_swapper.swap(scheduler_output.swap_out, scheduler_output.swap_in)
        req_ids = [s.req_id for s in scheduled]
        if not scheduled:
            return ModelRunnerOutput(req_ids=[], sampled_token_ids=[])
        inputs = prepare_inputs(
            scheduled,
            self.block_size,
            self.device,
            self.block_tables,
            logits_buckets=self._logits_buckets(),
        )
        self._fill_placeholders(inputs)
        logits = None
        if self.pp_size > 1:
            hidden = self._forward_stage(inputs)
        else:
            hidden, logits = self._forward(inputs)
        if hidden is None:  # a pipeline stage before the last: nothing to sample
            return ModelRunnerOutput(req_ids=req_ids, sampled_token_ids=[None] * len(req_ids))
        if self.is_pooling:
            return pool_step(self.pooler, scheduled, inputs, hidden)
        self._to_sample = (scheduled, inputs, hidden, logits)
        return None

    @torch.inference_mode()
    def sample_tokens(
        self, grammar_bitmask: np.ndarray | None, structured_output_request_ids: list[str]
    ) -> AsyncModelRunnerOutput:
        """Sample the step `launch_forward` left (its logits masked by the grammar
        bitmask, rows as in SchedulerOutput.grammar_bitmask)."""
        assert self._to_sample is not None, "launch_forward returned None first"
        scheduled, inputs, hidden, logits = self._to_sample
        self._to_sample = None
        output = self._sample(
            scheduled, inputs, hidden, logits, grammar_bitmask, structured_output_request_ids
        )
        add_prompt_logprobs(self.lm, scheduled, inputs, hidden, output)
        return output

    def _logits_buckets(self) -> list[int] | None:
        """On CUDA the LM head's rows are padded to the decode graphs' batch sizes: a
        cuBLAS product at a row count not seen before costs host time (at worst a wait
        for the device), and these shapes were all run once when the graphs were
        captured. Elsewhere no padding (it would be work for nothing)."""
        return self.cuda_graphs.sizes if self.cuda_graphs is not None else None

    def _forward(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states, logits of every token when a CUDA graph computed them)."""
        assert self.model is not None
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(inputs):
            return self.cuda_graphs.run(inputs)
        if self.piecewise_graphs is not None and self.piecewise_graphs.can_run(inputs):
            return self.piecewise_graphs.run(inputs)
        hidden = self.model(
            inputs.input_ids, inputs.positions, self.kv_caches, inputs.attn_metadata
        )
        assert isinstance(hidden, torch.Tensor)  # one pipeline stage: the hidden states
        return hidden, None

    def _forward_stage(self, inputs: StepInputs) -> torch.Tensor | None:
        """One pipeline stage: receive the previous stage's activations (unless first),
        run this stage's layers, send them on (unless last) without waiting: with
        several batches in flight the stage takes the next batch while this one
        travels. Hidden states on the last stage, None elsewhere."""
        model = self.model
        assert model is not None and supports_pp(model)
        received: IntermediateTensors | None = None
        if not self.is_first_stage:
            received = model.make_empty_intermediate_tensors(
                inputs.num_tokens, self.config.model_config.dtype, self.device
            )
            ps.pipeline_recv(received.tensors())
        out = model(
            inputs.input_ids, inputs.positions, self.kv_caches, inputs.attn_metadata, received
        )
        if self.is_last_stage:
            assert isinstance(out, torch.Tensor)
            return out
        assert isinstance(out, IntermediateTensors)
        self._send_to_next_stage(out.tensors())
        return None

    def _send_to_next_stage(self, tensors: list[torch.Tensor]) -> None:
        """Post this batch's sends once the previous batch's are done (one batch's
        activations travel at a time; the tensors live until their sends finish)."""
        for work in self._pp_sending[0]:
            work.wait()
        tensors = [t.contiguous() for t in tensors]
        self._pp_sending = (ps.pipeline_isend(tensors), tensors)

    def _generator(self, s: ScheduledRequest) -> torch.Generator | None:
        sp = s.sampling_params
        if sp is None or sp.seed is None:
            return None
        gen = self.generators.get(s.req_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(sp.seed)
            self.generators[s.req_id] = gen
        return gen

    def _sample(
        self,
        scheduled: list[ScheduledRequest],
        inputs: StepInputs,
        hidden: torch.Tensor,
        all_logits: torch.Tensor | None = None,
        grammar_bitmask: np.ndarray | None = None,
        structured_output_request_ids: list[str] | None = None,
    ) -> AsyncModelRunnerOutput:
        """Sample on the device; the tokens stay there for the next step's placeholders
        and travel to the host without blocking. `all_logits`: every token's logits,
        when the step's CUDA graph computed them (a decode step: every token samples)."""
        assert self.model is not None
        req_ids = [s.req_id for s in scheduled]
        rows = [scheduled[i] for i in inputs.sample_rows]
        if not rows:
            return AsyncModelRunnerOutput.start_copy(req_ids, [], None, None)
        logits = self._logits(inputs, hidden, all_logits)
        metadata = SamplingMetadata.build(
            [s.sampling_params for s in rows if s.sampling_params is not None],
            [_output_ids(s) for s in rows],
            [s.prompt_token_ids or [] for s in rows],
            [self._generator(s) for s in rows],
            self.device,
            logits.shape[-1],
            bad_words_token_ids_list=[
                s.sampling_params.bad_words_token_ids if s.sampling_params else None for s in rows
            ],
        )
        if grammar_bitmask is not None and structured_output_request_ids:
            metadata.grammar_bitmask = self._grammar_bitmask(
                rows, grammar_bitmask, structured_output_request_ids
            )
        out = self.sampler(logits, metadata)
        self.prev_sampled = out.sampled_token_ids
        self.prev_rows = {s.req_id: j for j, s in enumerate(rows)}
        logprobs = None
        if out.logprobs is not None:
            assert out.logprobs_token_ids is not None and out.ranks is not None
            logprobs = (out.logprobs_token_ids, out.logprobs, out.ranks)
        return AsyncModelRunnerOutput.start_copy(
            req_ids, inputs.sample_rows, out.sampled_token_ids, logprobs
        )

    def _grammar_bitmask(
        self, rows: list[ScheduledRequest], bitmask: np.ndarray, req_ids: list[str]
    ) -> GrammarBitmask:
        """The step's structured-output bitmask, its rows mapped to logits rows."""
        row_of = {s.req_id: j for j, s in enumerate(rows)}
        logits_rows = [row_of[r] for r in req_ids]
        return GrammarBitmask.build(logits_rows, bitmask, self.device, len(rows))

    def _logits(
        self, inputs: StepInputs, hidden: torch.Tensor, all_logits: torch.Tensor | None
    ) -> torch.Tensor:
        """[S, V] logits of the sampled rows (S = len(inputs.sample_rows))."""
        num_rows = len(inputs.sample_rows)
        if all_logits is not None and num_rows == all_logits.shape[0]:
            return all_logits
        if inputs.samples_every_token:
            return self.lm.compute_logits(hidden)
        # Padded rows (bucketed shapes) are computed and dropped.
        return self.lm.compute_logits(hidden[inputs.logits_indices])[:num_rows]

    def _fill_placeholders(self, inputs: StepInputs) -> None:
        """Input tokens sampled by the previous step (still on the device) replace
        their -1 placeholders, without a trip through the host."""
        if not inputs.placeholder_req_ids:
            return
        assert self.prev_sampled is not None, "a placeholder token with no step before it"
        rows = [self.prev_rows[r] for r in inputs.placeholder_req_ids]
        pairs = np.array([inputs.placeholder_index, rows], dtype=np.int64)
        (index_and_source,) = pack_to_device([pairs], self.device)
        inputs.input_ids[index_and_source[0]] = self.prev_sampled[index_and_source[1]]


def _output_ids(s: ScheduledRequest) -> list[int]:
    if s.output_token_ids is not None:
        return s.output_token_ids
    return []
