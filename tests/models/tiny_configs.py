"""Tiny random configs of every supported architecture, and HF reference helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

_COMMON = dict(vocab_size=512, max_position_embeddings=256, initializer_range=0.1)
_LLAMA_LIKE = dict(
    _COMMON,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)


def tiny_configs() -> dict[str, PretrainedConfig]:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        Glm4Config,
        GlmConfig,
        GPT2Config,
    )

    return {
        **_llama_configs(),
        **_opt_configs(),
        **_phi3_configs(),
        **_moe_configs(),
        **_gemma_configs(GemmaConfig, Gemma2Config, Gemma3TextConfig),
        **_glm_configs(GlmConfig, Glm4Config),
        "gpt2": GPT2Config(
            vocab_size=512, n_positions=256, n_embd=64, n_layer=2, n_head=4, initializer_range=0.1
        ),
    }


def _llama_configs() -> dict[str, PretrainedConfig]:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    llama3_rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 500000.0,
    }
    return {
        "llama": LlamaConfig(**_LLAMA_LIKE),
        "llama3-tied": LlamaConfig(
            **{**_LLAMA_LIKE, "tie_word_embeddings": True}, rope_scaling=llama3_rope
        ),
        "llama-linear-rope-bias": LlamaConfig(
            **_LLAMA_LIKE,
            attention_bias=True,
            mlp_bias=True,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
        "mistral": MistralConfig(**_LLAMA_LIKE, sliding_window=None),
        "qwen2": Qwen2Config(**_LLAMA_LIKE),
        "qwen3": Qwen3Config(**{**_LLAMA_LIKE, "tie_word_embeddings": True}, head_dim=32),
    }


def _opt_configs() -> dict[str, PretrainedConfig]:
    """Pre-LN with project_in/out (word_embed_proj_dim 32), and post-LN."""
    from transformers import OPTConfig

    base = dict(
        _COMMON,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        init_std=0.1,
    )
    return {
        "opt": OPTConfig(**base, word_embed_proj_dim=32),
        "opt-post-ln": OPTConfig(**base, do_layer_norm_before=False),
    }


def _phi3_configs() -> dict[str, PretrainedConfig]:
    from transformers import Phi3Config

    return {
        "phi3-partial-rope": Phi3Config(
            **_LLAMA_LIKE,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
            },
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    }


def _moe_configs() -> dict[str, PretrainedConfig]:
    from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    return {
        "mixtral": MixtralConfig(
            **_LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2, sliding_window=None
        ),
        # Layer 1 dense (mlp_only_layers); 8 experts of 32, top 3 not renormalized, and
        # a shared expert of 96 behind its sigmoid gate.
        "qwen2-moe": Qwen2MoeConfig(
            **{**_LLAMA_LIKE, "num_hidden_layers": 3},
            num_experts=8,
            num_experts_per_tok=3,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=96,
            norm_topk_prob=False,
            mlp_only_layers=[1],
        ),
        # decoder_sparse_step 2: layer 0 dense, layer 1 sparse; top 3 renormalized.
        "qwen3-moe": Qwen3MoeConfig(
            **_LLAMA_LIKE,
            head_dim=32,
            num_experts=8,
            num_experts_per_tok=3,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            decoder_sparse_step=2,
        ),
    }


def _gemma_configs(gemma: Any, gemma2: Any, gemma3: Any) -> dict[str, PretrainedConfig]:
    """Window 8, shorter than the test prompts plus their decode: the window matters.
    Gemma 2 alternates sliding and global layers; Gemma 3 here has 3 sliding : 1 global,
    its local rope theta differs from the global one, which is linearly scaled."""
    base = dict(_LLAMA_LIKE, head_dim=32, tie_word_embeddings=True)
    return {
        "gemma": gemma(**base),
        "gemma2": gemma2(
            **{**base, "num_hidden_layers": 3},
            sliding_window=8,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
        "gemma3": gemma3(
            **{**base, "num_hidden_layers": 4},
            sliding_window=8,
            sliding_window_pattern=4,
            query_pre_attn_scalar=24,
            final_logit_softcapping=3.0,
            rope_local_base_freq=100.0,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
    }


def _glm_configs(glm: Any, glm4: Any) -> dict[str, PretrainedConfig]:
    """Rotary on half of each head (interleaved), q/k/v biases; head_dim 32 (not
    hidden / heads). GLM's token ids default past this vocabulary."""
    base = dict(_LLAMA_LIKE, head_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return {
        "glm": glm(**base, rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
        "glm4": glm4(**base),
    }


def make_hf_model(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {}
    if getattr(config, "attn_logit_softcapping", None) is not None:
        # Gemma 2's attention soft-cap: transformers 5.17 (the GPU image's) runs such
        # models through SDPA by default, which drops the cap; 5.24 picks eager itself.
        kwargs["attn_implementation"] = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kwargs)
    # Random (not ones/zeros) norm weights and biases, so that loading them is tested.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.1)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def save_tiny(config: PretrainedConfig, path: Path, **save_kwargs: Any) -> torch.nn.Module:
    model = make_hf_model(config)
    model.save_pretrained(path, **save_kwargs)
    return model


def save_tiny_bin(config: PretrainedConfig, path: Path) -> torch.nn.Module:
    """A pytorch_model.bin checkpoint (transformers 5 only writes safetensors)."""
    model = make_hf_model(config)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return model


@torch.no_grad()
def hf_greedy(model: torch.nn.Module, prompt: list[int], max_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False
    )
    return out[0, len(prompt) :].tolist()


@torch.no_grad()
def hf_logits(model: torch.nn.Module, prompt: list[int]) -> torch.Tensor:
    return model(torch.tensor([prompt])).logits[0].float()


def windowed_configs() -> dict[str, PretrainedConfig]:
    """Llama-family configs with a sliding window of 8 (shorter than the test prompts):
    Mistral, Phi-3 and Mixtral window every layer; Qwen2 (use_sliding_window) only the
    layers from max_window_layers on, here layers 1 and 2 of 3."""
    from transformers import MistralConfig, MixtralConfig, Phi3Config, Qwen2Config

    return {
        "mistral-window": MistralConfig(**_LLAMA_LIKE, sliding_window=8),
        "qwen2-window": Qwen2Config(
            **{**_LLAMA_LIKE, "num_hidden_layers": 3},
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=1,
        ),
        "phi3-window": Phi3Config(
            **_LLAMA_LIKE, sliding_window=8, pad_token_id=0, bos_token_id=1, eos_token_id=2
        ),
        "mixtral-window": MixtralConfig(
            **_LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2, sliding_window=8
        ),
    }
