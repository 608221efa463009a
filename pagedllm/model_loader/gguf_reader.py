"""A fast, streaming reader of GGUF weights.

gguf-py's GGUFReader parses every metadata array element through numpy memmaps
(seconds for a 49k-token vocabulary) and transformers then dequantizes the whole
checkpoint into one dict. This reader walks the header with `struct` (string arrays
are skipped, not decoded) and dequantizes one tensor at a time from a memory map, so
peak memory is one float32 tensor beyond the model.

File layout (GGUF v2/v3, little endian):

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x (string key, u32 type, value)
    n_tensors x (string name, u32 n_dims, u64 dims[n_dims] (fastest first), u32 type, u64 offset)
    padding to `general.alignment` (32) | tensor data (offsets relative to here)
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NUMPY = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest first), i.e. GGUF dims reversed
    qtype: int  # gguf.GGMLQuantizationType value
    offset: int  # absolute byte offset in the file
    nbytes: int


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos]).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.scalar("<Q")  # read first: `self.pos += self.scalar()` would lose 8 bytes
        self.pos += n

    def value(self, vtype: int) -> Any:
        """A metadata value; arrays of strings are skipped (None): nothing here needs them."""
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            return self.scalar(_SCALARS[vtype])
        etype, count = self.scalar("<I"), self.scalar("<Q")
        if etype in _NUMPY:
            arr = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=self.pos)
            self.pos += arr.nbytes
            return arr.copy()
        for _ in range(count):
            if etype == _STRING:
                self.skip_string()
            else:
                self.value(etype)
        return None


@dataclass
class GGUFLayout:
    metadata: dict[str, Any]
    tensors: list[GGUFTensorInfo]
    buf: mmap.mmap  # keeps the mapping alive while tensors are read


def _tensor_nbytes(dims: list[int], qtype: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    return math.prod(dims) // block * type_size


def read_layout(path: str) -> GGUFLayout:
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (bad magic)")
    cur.pos = 4
    version, n_tensors, n_kv = cur.scalar("<I"), cur.scalar("<Q"), cur.scalar("<Q")
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported (need >= 2)")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        qtype, offset = cur.scalar("<I"), cur.scalar("<Q")
        infos.append((name, dims, qtype, offset))
    alignment = int(metadata.get("general.alignment", 32))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = [
        GGUFTensorInfo(
            name, tuple(reversed(dims)), qtype, data_start + off, _tensor_nbytes(dims, qtype)
        )
        for name, dims, qtype, off in infos
    ]
    return GGUFLayout(metadata, tensors, buf)


def dequantize_tensor(layout: GGUFLayout, info: GGUFTensorInfo) -> torch.Tensor:
    """The tensor as float32 in numpy/HF order, owning its memory."""
    from gguf import GGMLQuantizationType, dequantize

    raw = np.frombuffer(layout.buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)
    rows = math.prod(info.shape[:-1])
    values = dequantize(raw.reshape(rows, -1), GGMLQuantizationType(info.qtype))
    array = np.array(values, dtype=np.float32, copy=True).reshape(info.shape)
    return torch.from_numpy(array)


def raw_tensor(layout: GGUFLayout, info: GGUFTensorInfo) -> torch.Tensor:
    """The tensor's blocks as uint8 [rows, row_bytes] (a copy: the map is read-only)."""
    raw = np.frombuffer(layout.buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)
    rows = math.prod(info.shape[:-1])
    return torch.from_numpy(raw.reshape(rows, -1).copy())
