"""The experts' compute in plain torch: a loop over the experts that some token chose
(the CPU path and the oracle of the Triton kernel).

    out[t] = sum_j  w[t, j] * W2[e] (silu(W1[e] x_t) * (W3[e] x_t)),   e = topk_ids[t, j]

with W13[e] = [W1[e]; W3[e]] stacked as [2I, H] (gate rows, then up rows) and W2[e]
[H, I]. Each expert's output is weighted in float32 and rounded to the model dtype,
then summed in token order, as HF's `index_add_` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fused_experts_torch(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k] float32
    topk_ids: torch.Tensor,  # [T, k] int
) -> torch.Tensor:  # [T, H]
    out = torch.zeros_like(hidden_states)
    inter = w2.shape[2]
    flat_ids = topk_ids.reshape(-1).long()
    for expert in torch.unique(flat_ids).tolist():
        token, slot = torch.nonzero(topk_ids == expert, as_tuple=True)
        x = hidden_states[token]
        gate_up = F.linear(x, w13[expert])
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        y = F.linear(act, w2[expert]).float() * topk_weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out
