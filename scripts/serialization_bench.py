"""How the front end and the engine core talk: msgspec (msgpack) against pickle for the
two messages that cross every step, on this machine's CPU.

    python scripts/serialization_bench.py

Prints encode+decode microseconds of one request (with its SamplingParams) and of one
step's outputs for 256 running requests (one new token each).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import msgspec

from pagedllm.core.messages import (
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    RequestType,
    make_encoder,
    outputs_decoder,
    request_decoder,
)
from pagedllm.sampling_params import SamplingParams


def per_call_us(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e6


def main() -> None:
    encoder = make_encoder()
    params = SamplingParams(temperature=0.7, max_tokens=128, stop=["x"], seed=3)
    request = EngineCoreRequest("cmpl-0", list(range(1024)), params, None, time.time())
    outputs = EngineCoreOutputs(
        outputs=[EngineCoreOutput(f"cmpl-{i:032x}-0", [12345]) for i in range(256)]
    )
    add_decoder = request_decoder(RequestType.ADD)
    out_decoder = outputs_decoder()
    rows = [
        ("request (1,024 prompt ids)", request, add_decoder),
        ("step outputs (256 requests)", outputs, out_decoder),
    ]
    print("| message | msgspec us | pickle us |")
    print("|---|---|---|")
    for name, message, decoder in rows:
        fast = per_call_us(lambda m=message, d=decoder: d.decode(encoder.encode(m)), 2000)
        slow = per_call_us(lambda m=message: pickle.loads(pickle.dumps(m, protocol=5)), 2000)
        print(f"| {name} | {fast:.1f} | {slow:.1f} |")
    assert msgspec.msgpack.decode(encoder.encode(outputs), type=EngineCoreOutputs) == outputs


if __name__ == "__main__":
    main()
