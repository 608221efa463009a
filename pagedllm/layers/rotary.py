"""Rotary position embeddings (RoPE) with a cos/sin cache computed once.

Each head's first `rotary_dim` features are rotated in pairs (the rest pass through):
    neox style (Llama, Qwen, ...): pairs (i, i + rotary_dim/2)
    GPT-J style (interleaved):     pairs (2i, 2i + 1)
Scaling types: "default", "linear" (positions / factor), "llama3" (Llama 3.1 frequency
smoothing).

On CUDA tensors the rotation runs as one Triton kernel, in place on q and k
(layers/kernels/triton_rotary.py, the same fp32 arithmetic rounded once).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pagedllm.layers.cpu import decode_ops

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters(config: Any) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling dict or None) from a transformers 4.x or 5.x config."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", None)) or 10000.0
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if rope_type == "default":
        return float(theta), None
    return float(theta), {**merged, "rope_type": rope_type}


def _inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return 1.0 / (base**exponents)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the middle band blended.
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, blended, scaled)


def rotate_native(
    x: torch.Tensor,  # [T, n, head_size]
    cos: torch.Tensor,  # [T, 1, rotary_dim / 2]
    sin: torch.Tensor,  # [T, 1, rotary_dim / 2]
    is_neox_style: bool,
) -> torch.Tensor:  # [T, n, head_size] in x.dtype, a new tensor
    """The rotation in torch ops (fp32 math, rounded once; dims past rotary_dim kept):
    the CPU path of RotaryEmbedding and the reference of the Triton kernel
    (triton_rotary.py). neox pairs x[i] with x[i + rotary_dim/2], GPT-J x[2i] with x[2i+1]."""
    rotary_dim = 2 * cos.shape[-1]
    rot = x[..., :rotary_dim].float()
    if is_neox_style:
        x1, x2 = rot.chunk(2, dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if is_neox_style:
        out = torch.cat([o1, o2], dim=-1)
    else:
        out = torch.stack([o1, o2], dim=-1).flatten(-2)
    if rotary_dim == x.shape[-1]:
        return out.to(x.dtype)
    return torch.cat([out.to(x.dtype), x[..., rotary_dim:]], dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_size: int,
        rotary_dim: int,
        max_position: int,
        base: float,
        is_neox_style: bool = True,
        rope_scaling: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if rotary_dim % 2 != 0 or rotary_dim > head_size:
            raise ValueError(
                f"rotary_dim ({rotary_dim}) must be even and <= head_size ({head_size})"
            )
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.is_neox_style = is_neox_style
        cache = self._compute_cos_sin_cache(max_position, base, rope_scaling)
        # [max_position, rotary_dim] float32: cos in the first half, sin in the second.
        self.cos_sin_cache: torch.Tensor
        self.register_buffer("cos_sin_cache", cache, persistent=False)
        # (positions, version, (cos, sin)) of the last step, shared by every layer of the
        # step (see _step_cos_sin); one attribute, so threads see it whole.
        self._step: tuple[torch.Tensor, int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _compute_cos_sin_cache(
        self, max_position: int, base: float, scaling: dict[str, Any] | None
    ) -> torch.Tensor:
        inv_freq = _inv_freq(self.rotary_dim, base)
        positions = torch.arange(max_position, dtype=torch.float32)
        rope_type = (scaling or {}).get("rope_type", "default")
        if rope_type == "linear":
            positions = positions / float(scaling["factor"])  # type: ignore[index]
        elif rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)  # type: ignore[arg-type]
        elif rope_type != "default":
            raise ValueError(
                f"rope scaling type {rope_type!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)}"
            )
        freqs = torch.outer(positions, inv_freq.float())
        return torch.cat([freqs.cos(), freqs.sin()], dim=-1)

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T]; query [T, nh*head_size]; key [T, nkv*head_size] -> rotated
        (copies on the torch path; on CUDA the inputs themselves, rotated in place)."""
        if query.is_cuda and query.stride(-1) == 1 and key.stride(-1) == 1:
            return self._forward_triton(positions, query, key)
        num_tokens = positions.shape[0]
        in_place = self._rotates_in_place(query, key)
        if in_place and self._rotate_fused(positions, query, key):
            return query, key
        cos, sin = self._step_cos_sin(positions)
        if in_place:
            for x in (query, key):
                self._rotate_in_place(x.view(num_tokens, -1, self.head_size), cos, sin)
            return query, key
        q = rotate_native(query.view(num_tokens, -1, self.head_size), cos, sin, self.is_neox_style)
        k = rotate_native(key.view(num_tokens, -1, self.head_size), cos, sin, self.is_neox_style)
        return q.reshape(query.shape), k.reshape(key.shape)

    def _step_cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, rotary_dim/2] of these positions. Every layer of a step passes
        the same positions tensor, so the rows are gathered once per step: they are
        reused while the same tensor object comes back (held here, so its id cannot be
        recycled) with the same version counter. Inference tensors (the engine runs in
        inference mode) have no version counter: the input preparation makes a new
        positions tensor every step and nothing writes into it."""
        version = -1 if positions.is_inference() else positions._version
        step = self._step
        if step is not None and step[0] is positions and step[1] == version:
            return step[2]
        cos, sin = self.cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
        self._step = (positions, version, (cos, sin))
        return cos, sin

    def _rotate_fused(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> bool:
        """On the CPU, both rotated in place by one C++ call (layers/cpu/decode_ops.cpp)
        where it applies; returns whether it did."""
        ops = decode_ops.usable(query) if key.dim() == 2 and key.stride(-1) == 1 else None
        if ops is None or self.cos_sin_cache.dtype != torch.float32:
            return False
        if positions.dtype != torch.int64 or not positions.is_contiguous():
            return False
        ops.rotary_neox_(positions, query, key, self.cos_sin_cache, self.head_size)
        return True

    def _rotates_in_place(self, query: torch.Tensor, key: torch.Tensor) -> bool:
        """float32 neox rotation of whole heads: the same arithmetic written back into
        q and k (a few ops instead of slicing, casting and concatenating copies)."""
        return (
            self.is_neox_style
            and self.rotary_dim == self.head_size
            and query.dtype == torch.float32
            and key.dtype == torch.float32
            and query.stride(-1) == 1
            and key.stride(-1) == 1
        )

    def _rotate_in_place(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        # x [T, n, head_size] float32 (a view into the qkv projection's output)
        half = self.rotary_dim // 2
        x1, x2 = x[..., :half], x[..., half:]
        o1 = x1 * cos - x2 * sin
        o2 = x2 * cos + x1 * sin
        x1.copy_(o1)
        x2.copy_(o2)

    def _forward_triton(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Imported here: triton must not be imported before TRITON_INTERPRET is settled.
        from pagedllm.layers.kernels.triton_rotary import rotary_embedding

        num_tokens = positions.shape[0]
        rotary_embedding(
            positions.long(),  # no copy when already int64
            query.view(num_tokens, -1, self.head_size),
            key.view(num_tokens, -1, self.head_size),
            self.cos_sin_cache,
            self.is_neox_style,
        )
        return query, key


# One module per distinct configuration and device: every layer of a model shares it
# (a 30-layer model would otherwise hold 30 identical cos/sin caches).
_ROPE_CACHE: dict[tuple[Any, ...], RotaryEmbedding] = {}


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def get_rope(
    head_size: int,
    rotary_dim: int,
    max_position: int,
    base: float,
    is_neox_style: bool = True,
    rope_scaling: dict[str, Any] | None = None,
) -> RotaryEmbedding:
    """The (shared) rotary embedding, built on the current default device."""
    device = torch.get_default_device()
    key = (
        head_size,
        rotary_dim,
        max_position,
        base,
        is_neox_style,
        _freeze(rope_scaling),
        str(device),
    )
    if key not in _ROPE_CACHE:
        _ROPE_CACHE[key] = RotaryEmbedding(
            head_size, rotary_dim, max_position, base, is_neox_style, rope_scaling
        )
    return _ROPE_CACHE[key]


def get_rope_from_config(
    config: Any, head_size: int, is_neox_style: bool = True
) -> RotaryEmbedding:
    """The rotary embedding an HF config asks for (theta, scaling, partial_rotary_factor)."""
    base, scaling = rope_parameters(config)
    # transformers 5 moved partial_rotary_factor into rope_parameters.
    rope_dict = getattr(config, "rope_parameters", None) or {}
    partial = rope_dict.get("partial_rotary_factor") or getattr(
        config, "partial_rotary_factor", None
    )
    partial = float(partial or 1.0)
    max_position = int(getattr(config, "max_position_embeddings", None) or 2048)
    return get_rope(head_size, int(head_size * partial), max_position, base, is_neox_style, scaling)
