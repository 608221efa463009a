"""A tiny ChatGLM2/3 checkpoint in THUDM's layout, made from a tiny HF GLM model by
renaming (and fusing) its tensors, plus a torch reference of ChatGLM2's forward
written from the published architecture (THUDM's modeling_chatglm.py).

HF transformers has no ChatGLM class (its code lives in the checkpoints: model_type
"chatglm", trust_remote_code). The directory written here carries its own config class
(`auto_map` -> configuration_chatglm.py, the published config's fields), so it loads
only with trust_remote_code, as the real checkpoints do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_configs import make_hf_model
from transformers import PretrainedConfig

# The published ChatGLMConfig's fields (chatglm2-6b / chatglm3-6b configuration_chatglm.py).
CONFIG_CODE = """
from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(
        self,
        num_layers=28,
        padded_vocab_size=65024,
        hidden_size=4096,
        ffn_hidden_size=13696,
        kv_channels=128,
        num_attention_heads=32,
        seq_length=2048,
        layernorm_epsilon=1e-5,
        rope_ratio=1,
        rmsnorm=True,
        apply_residual_connection_post_layernorm=False,
        post_layer_norm=True,
        add_bias_linear=False,
        add_qkv_bias=False,
        multi_query_attention=False,
        multi_query_group_num=1,
        quantization_bit=0,
        pre_seq_len=None,
        **kwargs,
    ):
        self.num_layers = num_layers
        self.vocab_size = padded_vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.layernorm_epsilon = layernorm_epsilon
        self.rope_ratio = rope_ratio
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        super().__init__(**kwargs)
"""

# rope_ratio 0.05: base 500, so that positions up to ~45 turn the slowest pair too.
CHATGLM_CONFIG: dict[str, Any] = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"},
    "num_layers": 2,
    "padded_vocab_size": 512,
    "hidden_size": 64,
    "ffn_hidden_size": 96,
    "kv_channels": 32,  # not hidden_size / heads (16)
    "num_attention_heads": 4,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "seq_length": 256,
    "layernorm_epsilon": 1e-5,
    "rope_ratio": 0.05,
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "original_rope": True,
    "quantization_bit": 0,
    "pad_token_id": 0,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}


def glm_config(chatglm: dict[str, Any]) -> PretrainedConfig:
    """The HF GLM config of the same network (HF's convert_glm_weights_to_hf mapping)."""
    from transformers import GlmConfig

    return GlmConfig(
        vocab_size=chatglm["padded_vocab_size"],
        hidden_size=chatglm["hidden_size"],
        intermediate_size=chatglm["ffn_hidden_size"],
        num_hidden_layers=chatglm["num_layers"],
        num_attention_heads=chatglm["num_attention_heads"],
        num_key_value_heads=chatglm["multi_query_group_num"],
        head_dim=chatglm["kv_channels"],
        max_position_embeddings=chatglm["seq_length"],
        rms_norm_eps=chatglm["layernorm_epsilon"],
        attention_bias=chatglm["add_qkv_bias"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * chatglm["rope_ratio"],
            "partial_rotary_factor": 0.5,
        },
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=2,
        initializer_range=0.1,
    )


def to_chatglm_state_dict(glm: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """HF GLM tensors under ChatGLM's names; q/k/v fused into query_key_value."""
    out = {
        "transformer.embedding.word_embeddings.weight": glm["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": glm["model.norm.weight"],
        "transformer.output_layer.weight": glm["lm_head.weight"],
        # ChatGLM checkpoints carry the rotary buffer; nothing loads it.
        "transformer.rotary_pos_emb.inv_freq": torch.ones(8),
    }
    for i in range(num_layers):
        src, dst = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            parts = [glm[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{dst}self_attention.query_key_value.{kind}"] = torch.cat(parts)
        renames = {
            "self_attention.dense.weight": "self_attn.o_proj.weight",
            "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
            "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
            "input_layernorm.weight": "input_layernorm.weight",
            "post_attention_layernorm.weight": "post_attention_layernorm.weight",
        }
        for new, old in renames.items():
            out[dst + new] = glm[src + old]
    return {name: t.contiguous() for name, t in out.items()}


def save_tiny_chatglm(path: Path, **overrides: Any) -> tuple[torch.nn.Module, dict]:
    """Writes the ChatGLM directory; returns the HF GLM model of the same weights and
    the ChatGLM state dict."""
    chatglm = {**CHATGLM_CONFIG, **overrides}
    hf_glm = make_hf_model(glm_config(chatglm))
    state = to_chatglm_state_dict(hf_glm.state_dict(), chatglm["num_layers"])
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(chatglm, indent=2))
    (path / "configuration_chatglm.py").write_text(CONFIG_CODE)
    return hf_glm, state


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotary(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """ChatGLM's apply_rotary_pos_emb: x [s, n, hd]; cache [s, rot/2, 2] (cos, sin)
    rotates pairs (2i, 2i + 1) of the first `rot` features."""
    rot = cache.shape[-2] * 2
    xr, x_pass = x[..., :rot], x[..., rot:]
    xs = xr.reshape(*xr.shape[:-1], rot // 2, 2)
    c = cache[:, None]
    out = torch.stack(
        [
            xs[..., 0] * c[..., 0] - xs[..., 1] * c[..., 1],
            xs[..., 1] * c[..., 0] + xs[..., 0] * c[..., 1],
        ],
        -1,
    ).flatten(-2)
    return torch.cat([out, x_pass], dim=-1)


def _rope_cache(seq_len: int, cfg: dict[str, Any]) -> torch.Tensor:
    """ChatGLM's RotaryEmbedding(kv_channels // 2).forward_impl: [s, n_elem/2, 2]."""
    n_elem = cfg["kv_channels"] // 2
    base = 10000 * cfg["rope_ratio"]
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float) / n_elem))
    idx_theta = torch.outer(torch.arange(seq_len, dtype=torch.float), theta)
    return torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)


def _self_attention(x: torch.Tensor, sd: dict, p: str, cfg: dict, cache: torch.Tensor):
    s, nh, g, hd = (
        x.shape[0],
        cfg["num_attention_heads"],
        cfg["multi_query_group_num"],
        cfg["kv_channels"],
    )
    qkv = F.linear(x, sd[p + "query_key_value.weight"], sd[p + "query_key_value.bias"])
    q, k, v = qkv.split([nh * hd, g * hd, g * hd], dim=-1)
    q, k = _rotary(q.view(s, nh, hd), cache), _rotary(k.view(s, g, hd), cache)
    # Each query group serves nh / g consecutive heads.
    k = k.unsqueeze(-2).expand(s, g, nh // g, hd).reshape(s, nh, hd)
    v = v.view(s, g, hd).unsqueeze(-2).expand(s, g, nh // g, hd).reshape(s, nh, hd)
    ctx = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True
    )
    return F.linear(ctx.transpose(0, 1).reshape(s, nh * hd), sd[p + "dense.weight"])


@torch.no_grad()
def chatglm_reference_logits(sd: dict, cfg: dict[str, Any], ids: list[int]) -> torch.Tensor:
    """ChatGLM2's forward (pre-norm GLMBlocks, RMSNorm, SwiGLU with gate first): [s, V]."""
    eps = cfg["layernorm_epsilon"]
    cache = _rope_cache(len(ids), cfg)
    h = sd["transformer.embedding.word_embeddings.weight"][torch.tensor(ids)]
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        x = _rms(h, sd[p + "input_layernorm.weight"], eps)
        h = h + _self_attention(x, sd, p + "self_attention.", cfg, cache)
        x = _rms(h, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = F.linear(x, sd[p + "mlp.dense_h_to_4h.weight"]).chunk(2, dim=-1)
        h = h + F.linear(F.silu(gate) * up, sd[p + "mlp.dense_4h_to_h.weight"])
    h = _rms(h, sd["transformer.encoder.final_layernorm.weight"], eps)
    return F.linear(h, sd["transformer.output_layer.weight"])
