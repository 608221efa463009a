"""`pagedllm bench serve`: load-test a running OpenAI-compatible server, like `vllm
bench serve`, with vLLM's flags, metrics and result keys.

    pagedllm serve MODEL &
    pagedllm bench serve --dataset-name random --random-input-len 1024 \\
        --random-output-len 128 --num-prompts 1000 --request-rate 20 --ignore-eos

Requests stream (`"stream": true, "stream_options": {"include_usage": true}`); output
tokens come from the final usage chunk (else one per content chunk). Arrivals are a
seeded Poisson process at --request-rate (gamma gaps with shape --burstiness, as
vLLM's), or all at once for `inf`. --temperature defaults to 1.0 (vLLM leaves it to the
server): random-token workloads are sampled, not greedy. The initial request (the
first prompt) checks the setup and warms the server; it is not timed.

Splits: serve_dataset.py (the random prompts), serve_client.py (the streamed HTTP
request), serve_metrics.py (TTFT/TPOT/ITL and the report)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

import numpy as np

from pagedllm.benchmarks.serve_client import (
    RequestFuncInput,
    RequestFuncOutput,
    make_session,
    request_body,
    request_openai_stream,
)
from pagedllm.benchmarks.serve_dataset import SampleRequest, sample_random_requests
from pagedllm.benchmarks.serve_metrics import calculate_metrics, format_report
from pagedllm.benchmarks.workload import publish_results

CHAT_ENDPOINT = "/v1/chat/completions"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pagedllm bench serve")
    p.add_argument("--base-url", default=None, help="server URL; overrides --host/--port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", default="/v1/completions", help=f"or {CHAT_ENDPOINT}")
    p.add_argument("--model", default=None, help="served model name; default: GET /v1/models")
    p.add_argument("--tokenizer", default=None, help="tokenizer path; default: --model")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--dataset-name", choices=["random"], default="random")
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s or inf")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 is Poisson")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--result-dir", default=None)
    p.add_argument("--result-filename", default=None)
    p.add_argument("--disable-tqdm", action="store_true")
    p.add_argument("--percentile-metrics", default="ttft,tpot,itl", help="of ttft,tpot,itl,e2el")
    p.add_argument("--metric-percentiles", default="50,90,99")
    args = p.parse_args(argv)
    if args.request_rate <= 0 or args.burstiness <= 0:
        p.error("--request-rate and --burstiness must be positive")
    if args.num_prompts < 1:
        p.error("--num-prompts must be at least 1")
    return args


def base_url(args: argparse.Namespace) -> str:
    return (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")


def arrival_offsets(num: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send times in seconds from the start: all 0 for rate inf, else gamma-distributed
    gaps (Poisson for burstiness 1) with mean 1 / rate; the first request goes at 0."""
    if rate == float("inf"):
        return [0.0] * num
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), size=num)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]).tolist()[:num]


async def fetch_model_id(url: str) -> str:
    """The first model id the server lists."""
    async with make_session() as session, session.get(url + "/v1/models") as response:
        response.raise_for_status()
        body = await response.json()
    return str(body["data"][0]["id"])


def load_tokenizer(path: str, trust_remote_code: bool) -> Any:
    """A local tokenizer directory or .gguf file; else a name pagedllm resolves locally
    (a packaged model such as the embedded SmolLM2-135M-Instruct)."""
    from pagedllm.model_loader.tokenizer import get_tokenizer

    if not os.path.exists(path):
        from pagedllm.model_loader.resolve import resolve_model

        try:
            path = resolve_model(path, trust_remote_code=trust_remote_code).tokenizer_path
        except (ValueError, OSError) as exc:
            hint = f"cannot load a tokenizer for {path!r} ({exc}): give --tokenizer PATH"
            raise SystemExit(hint) from exc
    return get_tokenizer(path, trust_remote_code=trust_remote_code)


def is_chat(args: argparse.Namespace) -> bool:
    return bool(args.endpoint.rstrip("/").endswith("chat/completions"))


def _func_input(
    args: argparse.Namespace, api_url: str, model: str, req: SampleRequest
) -> RequestFuncInput:
    return RequestFuncInput(
        prompt=req.prompt,
        api_url=api_url,
        prompt_len=req.prompt_len,
        output_len=req.expected_output_len,
        model=model,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        chat=is_chat(args),
    )


async def run_requests(
    args: argparse.Namespace, api_url: str, model: str, requests: list[SampleRequest]
) -> tuple[list[RequestFuncOutput], float, float]:
    """Send every request at its arrival time (at most --max-concurrency in flight);
    returns the outputs, the wall time and the client's CPU time, in seconds."""
    from tqdm import tqdm

    inputs = [_func_input(args, api_url, model, r) for r in requests]
    bodies = [request_body(inp) for inp in inputs]
    offsets = arrival_offsets(len(inputs), args.request_rate, args.burstiness, args.seed)
    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    bar = tqdm(total=len(inputs), disable=args.disable_tqdm)
    async with make_session(args.max_concurrency) as session:
        test = await request_openai_stream(session, inputs[0])
        if not test.success:
            raise SystemExit(f"the initial test request failed: {test.error}")

        async def send(inp: RequestFuncInput, body: bytes) -> RequestFuncOutput:
            if limit is None:
                out = await request_openai_stream(session, inp, body)
            else:
                async with limit:
                    out = await request_openai_stream(session, inp, body)
            bar.update(1)
            return out

        start, cpu_start = time.perf_counter(), time.process_time()
        tasks = []
        for inp, body, offset in zip(inputs, bodies, offsets):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(inp, body)))
        outputs = await asyncio.gather(*tasks)
        duration, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    bar.close()
    return list(outputs), duration, cpu


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on uvloop when it is installed (a cheaper event loop)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    if hasattr(uvloop, "run"):  # uvloop >= 0.18
        return uvloop.run(coro)
    uvloop.install()
    return asyncio.run(coro)


def build_result(
    args: argparse.Namespace, model: str, tokenizer_id: str, outputs: list[RequestFuncOutput]
) -> dict[str, Any]:
    """vLLM's result fields for this run (metrics added by the caller)."""
    rate = args.request_rate if args.request_rate != float("inf") else "inf"
    return {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "openai-chat" if is_chat(args) else "openai",
        "model_id": model,
        "tokenizer_id": tokenizer_id,
        "num_prompts": args.num_prompts,
        "request_rate": rate,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": [o.output_tokens for o in outputs],
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "errors": [o.error for o in outputs],
    }


def save_result(args: argparse.Namespace, result: dict[str, Any]) -> str:
    concurrency = f"-concurrency{args.max_concurrency}" if args.max_concurrency else ""
    model_name = os.path.basename(str(result["model_id"]).rstrip("/"))
    default = f"openai-{result['request_rate']}qps{concurrency}-{model_name}-{result['date']}.json"
    path = os.path.join(args.result_dir or ".", args.result_filename or default)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    metrics = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
    percentiles = [float(p) for p in args.metric_percentiles.split(",")]
    url = base_url(args)
    model = args.model or run_async(fetch_model_id(url))
    tokenizer_id = args.tokenizer or model
    tokenizer = load_tokenizer(tokenizer_id, args.trust_remote_code)
    requests = sample_random_requests(
        tokenizer,
        args.num_prompts,
        args.random_input_len,
        args.random_output_len,
        args.random_range_ratio,
        args.seed,
    )
    outputs, duration, cpu = run_async(run_requests(args, url + args.endpoint, model, requests))
    result = build_result(args, model, tokenizer_id, outputs)
    summary = calculate_metrics(outputs, duration, metrics, percentiles)
    summary["client_cpu_util"] = cpu / duration  # near 1.0: the client is the bottleneck
    result.update(summary)
    report(result, outputs, metrics, percentiles)
    if args.save_result or args.result_dir or args.result_filename:
        print(f"saved {save_result(args, result)}")
    return result


def report(
    result: dict[str, Any],
    outputs: list[RequestFuncOutput],
    metrics: list[str],
    percentiles: list[float],
) -> None:
    print(format_report(result, metrics, percentiles), flush=True)
    errors = [o.error for o in outputs if not o.success]
    if errors:
        print(f"{len(errors)} requests failed; the first error: {errors[0]}", flush=True)
    if result["client_cpu_util"] > 0.8:
        print(f"warning: the client used {result['client_cpu_util']:.0%} of a CPU core")
    publish_results({k: v for k, v in result.items() if not isinstance(v, list)}, None)


if __name__ == "__main__":
    main()
