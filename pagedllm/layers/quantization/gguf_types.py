"""The GGUF (ggml) tensor types that stay quantized, with their block sizes.

Values are ggml's `GGMLQuantizationType` numbers, as stored in the file.
"""

from __future__ import annotations

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K, BF16 = 12, 13, 14, 30

# type -> (weights per block, bytes per block)
BLOCK_SIZES: dict[int, tuple[int, int]] = {
    Q4_0: (32, 18),
    Q4_1: (32, 20),
    Q5_0: (32, 22),
    Q5_1: (32, 24),
    Q8_0: (32, 34),
    Q4_K: (256, 144),
    Q5_K: (256, 176),
    Q6_K: (256, 210),
}
QUANTIZED_TYPES = frozenset(BLOCK_SIZES)
UNQUANTIZED_TYPES = frozenset((F32, F16, BF16))
TYPE_NAMES = {
    F32: "F32",
    F16: "F16",
    BF16: "BF16",
    Q4_0: "Q4_0",
    Q4_1: "Q4_1",
    Q5_0: "Q5_0",
    Q5_1: "Q5_1",
    Q8_0: "Q8_0",
    Q4_K: "Q4_K",
    Q5_K: "Q5_K",
    Q6_K: "Q6_K",
}
