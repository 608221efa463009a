"""What `pagedllm bench serve` itself costs: a fake OpenAI server (raw asyncio, its own
process, cheap) streams `--output-len` chunks per request at `--token-interval-ms` per token,
and the benchmark client runs S1's request count against it. The client must keep up
(its output tok/s close to num_prompts * output_len / (output_len * interval)) and
report a CPU use well under one core.

    python scripts/serve_client_cost.py --num-prompts 1000 --token-interval-ms 66
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class FakeStream(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection of the fake server: each POST is answered
    with a chunked SSE stream that the shared ticker feeds one token per tick."""

    def __init__(self, streams: set[FakeStream]) -> None:
        self.streams = streams
        self.buffer = b""
        self.remaining = 0  # tokens still to send for the current request
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n")
             if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
        if not sep or len(rest) < length:
            return
        self.buffer = rest[length:]
        self.remaining, self.sent = int(json.loads(rest[:length])["max_tokens"]), 0
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self.streams.add(self)

    def _chunk(self, payload: str) -> None:
        data = f"data: {payload}\n\n".encode()
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def tick(self) -> None:
        head = '{"id":"cmpl-x","object":"text_completion","created":0,"model":"fake","choices":'
        self.sent += 1
        self.remaining -= 1
        finish = '"length"' if self.remaining == 0 else "null"
        text = f'{{"index":0,"text":" t{self.sent + 3}","logprobs":null,"finish_reason":{finish}}}'
        self._chunk(f'{head}[{text}],"usage":null}}')
        if self.remaining == 0:
            usage = {"prompt_tokens": 0, "completion_tokens": self.sent}
            self._chunk(f'{head}[],"usage":{json.dumps(usage)}}}')
            self._chunk("[DONE]")
            self.transport.write(b"0\r\n\r\n")
            self.streams.discard(self)


async def serve_fake(port: int, interval_s: float) -> None:
    """Every interval, every open stream gets one token (an engine's decode step)."""
    streams: set[FakeStream] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeStream(streams), "127.0.0.1", port, backlog=4096)
    async with server:
        next_tick = loop.time()
        while True:  # ticks on a fixed clock: a slow tick does not delay the next ones
            next_tick += interval_s
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            for stream in list(streams):
                stream.tick()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--token-interval-ms", type=float, default=66.0)
    p.add_argument("--port", type=int, default=18731)
    p.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_fake:
        asyncio.run(serve_fake(args.port, args.token_interval_ms / 1000))
        return
    sys.path.insert(0, str(ROOT))
    from pagedllm.benchmarks import serve
    from pagedllm.benchmarks.word_model import write_word_model

    fake = subprocess.Popen([sys.executable, __file__, "--serve-fake", *sys.argv[1:]])
    try:
        tokenizer = write_word_model(tempfile.mkdtemp())
        time.sleep(1.0)
        fake_cpu = cpu_seconds(fake.pid)
        result = serve.main(
            [
                "--port",
                str(args.port),
                "--model",
                "fake",
                "--tokenizer",
                tokenizer,
                "--disable-tqdm",
                "--num-prompts",
                str(args.num_prompts),
                "--random-input-len",
                str(args.input_len),
                "--random-output-len",
                str(args.output_len),
            ]  # fmt: skip
        )
        fake_cpu = cpu_seconds(fake.pid) - fake_cpu
    finally:
        fake.terminate()
        fake.wait()
    ideal = 1000.0 / args.token_interval_ms * args.num_prompts
    print(
        f"client: {result['output_throughput']:,.0f} output tok/s (the fake server's pace "
        f"allows about {ideal:,.0f}), client CPU use {result['client_cpu_util']:.0%} of a core; "
        f"the fake server used {fake_cpu:.1f} CPU s"
    )


if __name__ == "__main__":
    main()
