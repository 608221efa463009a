"""Mixture-of-Experts decoders on the Llama block: Mixtral, Qwen2-MoE and Qwen3-MoE.
Only the feed-forward block differs from models/llama.py (`make_mlp`):

    Mixtral     every layer sparse; top-k weights renormalized; no shared expert
    Qwen2-MoE   sparse layers per decoder_sparse_step / mlp_only_layers (the others a
                dense MLP of intermediate_size); norm_topk_prob; plus a shared expert
                gated by sigmoid(shared_expert_gate(x)); q/k/v biases
    Qwen3-MoE   as Qwen2-MoE without the shared expert and biases, with Qwen3's
                per-head q/k RMSNorm

HF names its per-expert tensors `...experts.{e}.{gate,up,down}_proj.weight`
(Mixtral: `block_sparse_moe.experts.{e}.w1/w3/w2.weight`, renamed to `mlp.`); they
load into FusedMoE's stacked w13_weight / w2_weight.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.distributed.parallel_state import (
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from pagedllm.layers.fused_moe import FusedMoE
from pagedllm.layers.fused_moe.layer import EXPERT_SHARDS
from pagedllm.layers.linear import ReplicatedLinear
from pagedllm.models.llama import _STACKED, LlamaForCausalLM, LlamaMLP
from pagedllm.models.utils import load_weights_by_name

# ...experts.{e}.{proj}.weight (per expert) | ...experts.{gate_up_proj,down_proj} (stacked)
_PER_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(\w+)\.weight$")
_STACKED_EXPERTS = re.compile(r"^(.*\.experts)\.(gate_up_proj|down_proj)$")


class SparseMoeBlock(nn.Module):
    """Router (`gate`), the routed experts and an optional gated shared expert; the
    tensor-parallel partial sums of both are all-reduced once, after they are added."""

    def __init__(
        self,
        config: PretrainedConfig,
        num_experts: int,
        intermediate_size: int,
        renormalize: bool,
        shared_intermediate_size: int = 0,
    ) -> None:
        super().__init__()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.gate = ReplicatedLinear(config.hidden_size, num_experts, bias=False)
        self.experts = FusedMoE(
            num_experts,
            config.num_experts_per_tok,
            config.hidden_size,
            intermediate_size,
            renormalize=renormalize,
            reduce_results=False,
            hidden_act=config.hidden_act,
        )
        self.shared_expert: LlamaMLP | None = None
        if shared_intermediate_size:
            self.shared_expert = LlamaMLP(config, shared_intermediate_size, reduce_results=False)
            self.shared_expert_gate = ReplicatedLinear(config.hidden_size, 1, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        out = self.experts(hidden_states, self.gate(hidden_states))
        if self.shared_expert is not None:
            gate = torch.sigmoid(self.shared_expert_gate(hidden_states))
            out = out + gate * self.shared_expert(hidden_states)
        if self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        return out


def _expert_target(name: str) -> tuple[str, str, int | None] | None:
    """(param name, shard id, expert id) of an expert tensor's (renamed) HF name."""
    match = _PER_EXPERT.match(name)
    if match is not None and match.group(3) in EXPERT_SHARDS:
        prefix, expert, proj = match.groups()
        shard = EXPERT_SHARDS[proj]
        return f"{prefix}.{'w2' if shard == 'w2' else 'w13'}_weight", shard, int(expert)
    match = _STACKED_EXPERTS.match(name)
    if match is not None:
        prefix, proj = match.groups()
        shard = "w13" if proj == "gate_up_proj" else "w2"
        return f"{prefix}.{shard}_weight", shard, None
    return None


class MoeForCausalLM(LlamaForCausalLM):
    """The shared loading of the MoE models: expert tensors go to FusedMoE's loader,
    the rest through the Llama path."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()

        def not_experts() -> Iterator[tuple[str, torch.Tensor]]:
            for hf_name, tensor in weights:
                name = self._rename(hf_name)
                target = _expert_target(name) if name is not None else None
                if target is None:
                    if name is not None:
                        yield name, tensor
                    continue
                param_name, shard_id, expert_id = target
                if param_name in params:  # else: a layer of another pipeline stage
                    param = params[param_name]
                    param.weight_loader(param, tensor, shard_id, expert_id)  # type: ignore[attr-defined]
                    loaded.add(param_name)

        loaded |= load_weights_by_name(self, not_experts(), _STACKED)
        return loaded


class MixtralForCausalLM(MoeForCausalLM):
    def make_mlp(self, layer_idx: int) -> nn.Module:
        c = self.config
        return SparseMoeBlock(c, c.num_local_experts, c.intermediate_size, renormalize=True)

    def _rename(self, name: str) -> str | None:
        renamed = super()._rename(name)
        return renamed.replace(".block_sparse_moe.", ".mlp.") if renamed else None


class Qwen2MoeForCausalLM(MoeForCausalLM):
    qkv_bias_default = True
    shared_expert = True

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        # Qwen2-MoE configs of transformers 5 name the q/k/v bias `qkv_bias`.
        self.qkv_bias_default = bool(getattr(config, "qkv_bias", self.qkv_bias_default))
        super().__init__(config, prefix)

    def is_sparse_layer(self, layer_idx: int) -> bool:
        """HF's rule: not listed in mlp_only_layers, and every decoder_sparse_step-th layer."""
        c = self.config
        step = int(getattr(c, "decoder_sparse_step", 1) or 1)
        only_mlp = list(getattr(c, "mlp_only_layers", None) or [])
        return layer_idx not in only_mlp and c.num_experts > 0 and (layer_idx + 1) % step == 0

    def make_mlp(self, layer_idx: int) -> nn.Module:
        c = self.config
        if not self.is_sparse_layer(layer_idx):
            return LlamaMLP(c)
        shared = int(getattr(c, "shared_expert_intermediate_size", 0) or 0)
        return SparseMoeBlock(
            c,
            c.num_experts,
            c.moe_intermediate_size,
            renormalize=bool(getattr(c, "norm_topk_prob", False)),
            shared_intermediate_size=shared if self.shared_expert else 0,
        )


class Qwen3MoeForCausalLM(Qwen2MoeForCausalLM):
    qkv_bias_default = False  # Qwen3 follows `attention_bias`
    qk_norm = True
    shared_expert = False
