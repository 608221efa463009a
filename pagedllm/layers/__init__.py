"""Model layers: attention, tensor-parallel linear, embeddings, norms, rotary."""
