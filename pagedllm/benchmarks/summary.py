"""A short markdown table of benchmark results: the `--output-json` files of
`pagedllm bench throughput` / `latency` (one result or a list of them per file).

    python -m pagedllm.benchmarks.summary t1.json l1.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

THROUGHPUT_HEADER = "| file | backend | requests | seconds | output tok/s | total tok/s | x HF |"
LATENCY_HEADER = "| file | batch | in / out | median s | tok/s |"


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        data = json.load(f)
    return data if isinstance(data, list) else [data]


def throughput_row(name: str, r: dict[str, Any]) -> str:
    ratio = r.get("ratio_to_hf", "")
    return (
        f"| {name} | {r['backend']} | {r['num_requests']} | {r['elapsed_s']} | "
        f"{r['output_tokens_per_s']:,.1f} | {r['total_tokens_per_s']:,.1f} | {ratio} |"
    )


def latency_row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['batch_size']} | {r['input_len']} / {r['output_len']} | "
        f"{r['median_s']} | {r['tokens_per_s']:,.1f} |"
    )


def markdown(paths: list[str]) -> str:
    """One table for the throughput results and one for the latency results."""
    throughput, latency = [], []
    for path in paths:
        for r in load(path):
            if "output_tokens_per_s" in r:
                throughput.append(throughput_row(path, r))
            elif "tokens_per_s" in r:
                latency.append(latency_row(path, r))
            else:
                raise ValueError(f"{path}: not a throughput or latency result: {sorted(r)}")
    parts = []
    if throughput:
        parts.append("\n".join([THROUGHPUT_HEADER, "|---" * 7 + "|", *throughput]))
    if latency:
        parts.append("\n".join([LATENCY_HEADER, "|---" * 5 + "|", *latency]))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        raise SystemExit("usage: python -m pagedllm.benchmarks.summary RESULT.json ...")
    print(markdown(paths))


if __name__ == "__main__":
    main()
