"""Shared helpers of the Triton launchers: argument checks and one launch path.

On CUDA tensors a kernel runs compiled. On CPU tensors it runs through Triton's
interpreter, which needs `TRITON_INTERPRET=1` in the environment before `triton` is
first imported (the `@triton.jit` decorators of triton.language itself read it then);
the kernel tests set it in tests/kernels/conftest.py, so no module outside the
`triton_*` files may import triton at import time. `launch` refuses CPU tensors
otherwise, with an error that says so.

Three bugs of Triton 3.6.0's interpreter are worked around by `_fix_interpreter`, once,
before the first interpreted launch (the compiled GPU path is untouched):
- it turns a scalar into a Python int with `int(array)`, which numpy >= 2.4 refuses for
  its 1-element arrays, so `range(start, end)` over loaded values fails; the fix is the
  upstream one (triton-lang/triton PR #9172, issue #9171);
- it stores bfloat16 as uint16 bit patterns and `tl.dot` multiplies those bits
  (triton-lang/triton issue #11584); the operands are widened to float32 first, which
  is what the GPU's bf16 dot with fp32 accumulation computes;
- its float32 -> float8e4nv cast rounds the mantissa up without carrying into the
  exponent (124.1 becomes 64, not 128); torch's round-to-nearest-even cast replaces it.
(Its float32 -> bfloat16 cast truncates where the GPU rounds to nearest even: CPU
results of 16-bit kernels may differ from the GPU's by one unit in the last place.)

Integer arguments that change from step to step are marked `do_not_specialize`. Triton
otherwise compiles one variant per class of each integer (== 1, divisible by 16,
other), and a class first met in the middle of a run compiles there, for a second or
so on the host (a likely cause, not yet confirmed, of the first T2 run on a fresh
machine, with an empty Triton cache, being about 1 s slower than the next ones). Those
marked: the sampler's seed and split counts
(they follow the batch size) and the block-table row stride of the attention kernels
(the widest sequence of an eager step). None of them reaches a vectorised access: the
sm_90 code compiled with and without their divisibility is the same
(`scripts/kernel_resources.py`). Strides of activations, fixed by the model, stay
specialised, since their divisibility is what lets loads be 16-byte vectors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter
from triton.runtime.interpreter import InterpretedFunction

Grid = tuple[int, ...]

_INTERPRETER_FIXED = False

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def next_power_of_2(n: int) -> int:
    return int(triton.next_power_of_2(max(int(n), 1)))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=8)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (8 elsewhere: the interpreter's stand-in)."""
    if device.type != "cuda":
        return 8
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def launch(kernel: Any, grid: Grid, device: torch.device, *args: Any, **kwargs: Any) -> None:
    """`kernel[grid](*args, **kwargs)`; CPU tensors need the interpreter (see above)."""
    interpreted = isinstance(kernel, InterpretedFunction)
    if device.type != "cuda" and not interpreted:
        raise RuntimeError(
            f"Triton kernels run on {device.type} tensors only through the interpreter: set "
            "TRITON_INTERPRET=1 before triton is first imported"
        )
    if interpreted:
        _fix_interpreter()
    kernel[grid](*args, **kwargs)


def _fix_interpreter() -> None:
    global _INTERPRETER_FIXED
    if _INTERPRETER_FIXED:
        return
    patch_tensor = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor: Any, scope: Any) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    builder = interpreter.InterpreterBuilder
    create_dot = builder.create_dot

    def create_dot_widened(self: Any, a: Any, b: Any, *rest: Any) -> Any:
        return create_dot(self, _bf16_as_f32(a), _bf16_as_f32(b), *rest)

    create_fp_to_fp = builder.create_fp_to_fp

    def create_fp_to_fp_rounded(self: Any, src: Any, dst_type: Any, rounding_mode: Any) -> Any:
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.float8e4nv:
            fp8 = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.float8_e4m3fn)
            return interpreter.TensorHandle(fp8.view(torch.uint8).numpy(), dst_type.scalar)
        return create_fp_to_fp(self, src, dst_type, rounding_mode)

    interpreter._patch_lang_tensor = patch_lang_tensor
    builder.create_dot = create_dot_widened  # type: ignore[method-assign]
    builder.create_fp_to_fp = create_fp_to_fp_rounded  # type: ignore[method-assign]
    _INTERPRETER_FIXED = True


def _bf16_as_f32(handle: Any) -> Any:
    if handle.dtype != tl.bfloat16:
        return handle
    bits = handle.data.astype(np.uint32) << np.uint32(16)
    return interpreter.TensorHandle(bits.view(np.float32), tl.float32)


def check_dtype(name: str, t: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if t.dtype not in allowed:
        raise ValueError(f"{name}: dtype {t.dtype} not in {list(allowed)}")


def check_ndim(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dim must be contiguous, strides {t.stride()}")


def check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous, shape {tuple(t.shape)} strides {t.stride()}")


def check_same_device(*named: tuple[str, torch.Tensor]) -> torch.device:
    device = named[0][1].device
    for name, t in named[1:]:
        if t.device != device:
            raise ValueError(f"{name}: on {t.device}, expected {device} like {named[0][0]}")
    return device


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (no tf32); 16-bit ones ignore this."""
    return "ieee" if dtype == torch.float32 else "tf32"
