"""The model runner: owns the model, the KV cache and the sampler of one device,
and turns a SchedulerOutput into a ModelRunnerOutput."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pagedllm.config import EngineConfig
from pagedllm.engine.scheduler_output import (
    ModelRunnerOutput,
    SampledLogprobs,
    ScheduledRequest,
    SchedulerOutput,
)
from pagedllm.layers.attention.metadata import PoolingMetadata
from pagedllm.layers.sampler import Sampler, compute_prompt_logprobs
from pagedllm.layers.sampling_metadata import SamplingMetadata
from pagedllm.worker import kv_cache as kvc
from pagedllm.worker.input_prep import StepInputs, prepare_inputs

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig, device: torch.device | None = None) -> None:
        self.config = config
        self.device = device or config.device_config.device
        self.block_size = config.cache_config.block_size
        self.model: nn.Module | None = None
        self.kv_caches: list[torch.Tensor] = []
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        self.prompt_ids: dict[str, list[int]] = {}
        self.is_pooling = config.model_config.runner == "pooling"
        self.cuda_graphs: Any = None
        self.pooler: Any = None

    # ---- set-up -------------------------------------------------------------
    def load_model(self) -> None:
        from pagedllm.layers.attention.selector import attach_attention_backend
        from pagedllm.model_loader.loader import get_model

        torch.manual_seed(self.config.model_config.seed)
        self.model = get_model(self.config.model_config, self.device)
        attach_attention_backend(self.model, self.device)
        if self.is_pooling:
            from pagedllm.layers.pooler import Pooler

            # The runner owns the pooler, so decoder models pool too (LAST by default).
            self.pooler = Pooler.from_model_config(self.config.model_config)

    @property
    def num_attention_layers(self) -> int:
        from pagedllm.layers.attention.layer import Attention

        assert self.model is not None
        return sum(1 for m in self.model.modules() if isinstance(m, Attention))

    def kv_cache_spec(self, tp_size: int = 1) -> kvc.KVCacheSpec:
        return kvc.kv_cache_spec(self.config, self.num_attention_layers, tp_size)

    def determine_num_blocks(self, tp_size: int = 1) -> int:
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

    def initialize_kv_cache(self, num_blocks: int, tp_size: int = 1) -> None:
        spec = self.kv_cache_spec(tp_size)
        kvc.check_fits(self.config, spec, num_blocks)
        self.kv_caches = kvc.allocate_kv_caches(spec, num_blocks, self.device)
        if self.device.type == "cuda" and not self.config.enforce_eager and not self.is_pooling:
            from pagedllm.worker.cuda_graphs import CudaGraphRunner

            self.cuda_graphs = CudaGraphRunner(self)
            self.cuda_graphs.capture()

    # ---- one step ---------------------------------------------------------
    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        for req_id in scheduler_output.finished_req_ids:
            self.generators.pop(req_id, None)
            self.prompt_ids.pop(req_id, None)
        scheduled = scheduler_output.scheduled
        req_ids = [s.req_id for s in scheduled]
        if not scheduled:
            return ModelRunnerOutput(req_ids=[], sampled_token_ids=[])
        self._remember_prompts(scheduled)
        inputs = prepare_inputs(scheduler_output, self.block_size, self.device)
        hidden = self._forward(inputs)
        if self.is_pooling:
            return self._pool(scheduled, inputs, hidden)
        output = self._sample(scheduled, inputs, hidden)
        self._add_prompt_logprobs(scheduled, inputs, hidden, output)
        return output

    def _remember_prompts(self, scheduled: list[ScheduledRequest]) -> None:
        for s in scheduled:
            if s.prompt_token_ids is not None and s.req_id not in self.prompt_ids:
                self.prompt_ids[s.req_id] = s.prompt_token_ids

    def _forward(self, inputs: StepInputs) -> torch.Tensor:
        assert self.model is not None
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(inputs):
            return self.cuda_graphs.run(inputs)
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.attn_metadata)

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
        self, scheduled: list[ScheduledRequest], inputs: StepInputs, hidden: torch.Tensor
    ) -> ModelRunnerOutput:
        assert self.model is not None
        rows = [scheduled[i] for i in inputs.sample_rows]
        sampled: list[int | None] = [None] * len(scheduled)
        logprobs: list[SampledLogprobs | None] | None = None
        if rows:
            logits = self.model.compute_logits(hidden[inputs.logits_indices])
            metadata = SamplingMetadata.build(
                [s.sampling_params for s in rows],
                [_output_ids(s) for s in rows],
                [self.prompt_ids.get(s.req_id, []) for s in rows],
                [self._generator(s) for s in rows],
                self.device,
                logits.shape[-1],
            )
            out = self.sampler(logits, metadata)
            tokens = out.sampled_token_ids.tolist()
            for row, token in zip(inputs.sample_rows, tokens):
                sampled[row] = token
            if out.logprobs is not None:
                logprobs = _unpack_logprobs(out, inputs.sample_rows, len(scheduled))
        return ModelRunnerOutput(
            req_ids=[s.req_id for s in scheduled], sampled_token_ids=sampled, logprobs=logprobs
        )

    def _add_prompt_logprobs(
        self,
        scheduled: list[ScheduledRequest],
        inputs: StepInputs,
        hidden: torch.Tensor,
        output: ModelRunnerOutput,
    ) -> None:
        assert self.model is not None
        qsl = inputs.attn_metadata.query_start_loc_cpu
        assert qsl is not None
        for i, s in enumerate(scheduled):
            sp = s.sampling_params
            if sp is None or sp.prompt_logprobs is None or s.num_computed_tokens >= s.num_prompt_tokens:
                continue
            prompt = self.prompt_ids[s.req_id]
            # Position p predicts prompt token p + 1; positions past the prompt are not scored.
            start = s.num_computed_tokens
            end = min(start + s.num_new_tokens, s.num_prompt_tokens - 1)
            if end <= start:
                continue
            lo = int(qsl[i])
            logits = self.model.compute_logits(hidden[lo : lo + end - start])
            targets = torch.tensor(prompt[start + 1 : end + 1], device=logits.device)
            out = compute_prompt_logprobs(logits, targets, sp.prompt_logprobs)
            output.prompt_logprobs[s.req_id] = _unpack_logprobs(
                out, list(range(end - start)), end - start
            )  # type: ignore[assignment]

    def _pool(
        self, scheduled: list[ScheduledRequest], inputs: StepInputs, hidden: torch.Tensor
    ) -> ModelRunnerOutput:
        assert self.model is not None
        md = inputs.attn_metadata
        assert md.query_start_loc_cpu is not None and md.seq_lens_cpu is not None
        pooling_metadata = PoolingMetadata(
            prompt_lens=md.seq_lens_cpu.to(torch.int64),
            query_start_loc=md.query_start_loc_cpu.to(torch.int64),
        )
        params = [s.pooling_params for s in scheduled]
        pooled = self.pooler(hidden[: inputs.num_tokens], pooling_metadata, params)
        out = ModelRunnerOutput(
            req_ids=[s.req_id for s in scheduled], sampled_token_ids=[None] * len(scheduled)
        )
        for s, vec in zip(scheduled, pooled):
            out.pooled[s.req_id] = vec.float().cpu().tolist()
        return out


def _output_ids(s: ScheduledRequest) -> list[int]:
    if s.output_token_ids is not None:
        return s.output_token_ids
    return []


def _unpack_logprobs(out: Any, rows: list[int], num_rows: int) -> list[SampledLogprobs | None]:
    """One .tolist() per tensor, then per-row SampledLogprobs."""
    token_ids = out.logprobs_token_ids.tolist()
    values = out.logprobs.tolist()
    ranks = out.ranks.tolist()
    result: list[SampledLogprobs | None] = [None] * num_rows
    for j, row in enumerate(rows):
        result[row] = SampledLogprobs(token_ids[j], values[j], ranks[j])
    return result
