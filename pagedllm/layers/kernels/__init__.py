"""The Triton kernels of the layers, one `triton_*.py` file each; each docstring names the
kernel's torch reference: a `*_ref` beside it or the layer's torch path it imports (the
torch attention backend for the attention kernels).

Only these `triton_*` modules (and `pagedllm/triton_utils.py`) import triton at import
time; the `nn.Module`s that call them (layernorm, rotary, activation, sampler, the
attention backend, fused MoE, the quantized linear methods) import them lazily, on CUDA
tensors only. This package imports nothing, so importing it never imports triton.
"""
