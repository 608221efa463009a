"""ChatGLM2, ChatGLM3 and GLM-4-9B-chat in THUDM's own layout (model_type "chatglm",
`ChatGLMModel` / `ChatGLMForConditionalGeneration`, config class from the model's own
code: trust_remote_code).

The network is GLM's (models/glm.py): HF transformers' GLM was converted from these
checkpoints by renaming tensors only. So the config is translated into a `GlmConfig`
and the checkpoint names are mapped onto GLM's modules:

    transformer.embedding.word_embeddings         -> model.embed_tokens
    transformer.encoder.layers.N.self_attention.  -> model.layers.N.self_attn.
        query_key_value [q heads | k groups | v groups], fused -> qkv_proj
        dense                                              -> o_proj
    transformer.encoder.layers.N.mlp.dense_h_to_4h [gate | up] -> mlp.gate_up_proj
    transformer.encoder.layers.N.mlp.dense_4h_to_h           -> mlp.down_proj
    transformer.encoder.final_layernorm           -> model.norm
    transformer.output_layer                      -> lm_head (never tied)

Rotary: half of each head (ChatGLM's RotaryEmbedding(kv_channels // 2)), interleaved
pairs, base 10000 * rope_ratio. Multi-query groups (`multi_query_group_num`) are the
kv heads.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from pagedllm.models.glm import GlmForCausalLM
from pagedllm.models.utils import StackedMapping

# (ChatGLM name fragment, pagedllm name fragment), applied in order.
_RENAMES = (
    ("transformer.embedding.word_embeddings.", "model.embed_tokens."),
    ("transformer.encoder.final_layernorm.", "model.norm."),
    ("transformer.encoder.layers.", "model.layers."),
    ("transformer.output_layer.", "lm_head."),
    (".self_attention.query_key_value.", ".self_attn.qkv_proj."),
    (".self_attention.dense.", ".self_attn.o_proj."),
    (".mlp.dense_h_to_4h.", ".mlp.gate_up_proj."),
    (".mlp.dense_4h_to_h.", ".mlp.down_proj."),
)

# ChatGLM config values this implementation does not cover (no published ChatGLM2/3
# or GLM-4-chat checkpoint sets them): (attribute, the supported value, what it is).
_REQUIRED = (
    ("multi_query_attention", True, "per-head interleaved q/k/v without query groups"),
    ("rmsnorm", True, "LayerNorm instead of RMSNorm"),
    ("apply_residual_connection_post_layernorm", False, "residual after the norm"),
    ("post_layer_norm", True, "no final norm"),
    ("add_bias_linear", False, "biases on the output and MLP projections"),
)


def _check_supported(config: PretrainedConfig) -> None:
    if getattr(config, "padded_vocab_size", None) is None:
        raise ValueError(
            "ChatGLM-6B (the first ChatGLM: 2D positions, GELU, LayerNorm) is not supported; "
            "ChatGLM2, ChatGLM3 and GLM-4-9B-chat are"
        )
    if getattr(config, "vision_config", None) is not None:
        raise ValueError("GLM-4V (model_type 'chatglm' with a vision tower) is not supported")
    if getattr(config, "quantization_bit", 0) or getattr(config, "pre_seq_len", None):
        raise ValueError(
            "ChatGLM checkpoints with its own int4/int8 quantization (quantization_bit) or "
            "P-tuning prefixes (pre_seq_len) are not supported"
        )
    for name, value, what in _REQUIRED:
        if bool(getattr(config, name, value)) != value:
            raise ValueError(f"ChatGLM config {name}={not value} ({what}) is not supported")


def glm_config_from_chatglm(config: PretrainedConfig) -> PretrainedConfig:
    """The `GlmConfig` of a ChatGLM2/3 config (HF's own conversion, convert_glm_weights_to_hf)."""
    from transformers import GlmConfig

    _check_supported(config)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "kv_channels", None) or config.hidden_size // heads)
    rope_ratio = float(getattr(config, "rope_ratio", None) or 1.0)
    return GlmConfig(
        vocab_size=config.padded_vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.ffn_hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=config.multi_query_group_num,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=config.seq_length,
        rms_norm_eps=config.layernorm_epsilon,
        attention_bias=bool(getattr(config, "add_qkv_bias", False)),
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * rope_ratio,
            "partial_rotary_factor": 0.5,
        },
        pad_token_id=getattr(config, "pad_token_id", None),
        eos_token_id=getattr(config, "eos_token_id", None),
    )


def chatglm_to_glm_name(name: str) -> str | None:
    """A ChatGLM checkpoint name as this model's parameter name (None: not a weight)."""
    if "rotary_pos_emb" in name:
        return None  # inv_freq buffer, recomputed
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


class ChatGLMForCausalLM(GlmForCausalLM):
    stacked_params: StackedMapping = []  # query_key_value and dense_h_to_4h are fused already

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        super().__init__(glm_config_from_chatglm(config), prefix)

    def _rename(self, name: str) -> str | None:
        glm_name = chatglm_to_glm_name(name)
        return None if glm_name is None else super()._rename(glm_name)
