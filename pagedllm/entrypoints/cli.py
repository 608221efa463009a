"""The `pagedllm` command (vLLM's `vllm` command):

    pagedllm serve [MODEL] [--host H] [--port P] [engine flags]     OpenAI-compatible server
    pagedllm generate --prompt TEXT [--prompt TEXT ...] [flags]     offline generation
    pagedllm chat [MODEL] [--system-prompt TEXT] [flags]            interactive chat
    pagedllm bench {throughput,latency,cpu-chat,serve} [flags]      benchmarks

MODEL defaults to the embedded SmolLM2-135M-Instruct. User-facing output is printed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pagedllm.entrypoints.cli_args import (
    add_engine_args,
    add_sampling_args,
    add_server_args,
    engine_args_from_namespace,
    sampling_params_from_namespace,
)
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

BENCHMARKS = {
    "throughput": "pagedllm.benchmarks.throughput",
    "latency": "pagedllm.benchmarks.latency",
    "cpu-chat": "pagedllm.benchmarks.cpu_chat",
    "serve": "pagedllm.benchmarks.serve",
}


def _add_model_positional(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_tag", nargs="?", default=None, help="The model (same as --model); default: embedded"
    )


def _make_engine(args: argparse.Namespace) -> Any:
    from pagedllm.engine.llm_engine import LLMEngine
    from pagedllm.entrypoints.utils import configure_logging

    configure_logging("WARNING")
    return LLMEngine.from_engine_args(engine_args_from_namespace(args))


def _run(engine: Any, request_id: str, prompt: Any, params: SamplingParams) -> Iterator[Any]:
    """Drive a private engine until the request finishes, yielding its outputs."""
    engine.add_request(request_id, prompt, params)
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.request_id == request_id:
                yield output


def cmd_serve(args: argparse.Namespace) -> None:
    from pagedllm.entrypoints.openai.api_server import run_server

    run_server(args)


def cmd_generate(args: argparse.Namespace) -> None:
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise SystemExit("pagedllm generate: give --prompt TEXT (or prompts on stdin, one a line)")
    params = sampling_params_from_namespace(args, output_kind=RequestOutputKind.FINAL_ONLY)
    engine = _make_engine(args)
    for i, prompt in enumerate(prompts):
        try:
            final = list(_run(engine, f"generate-{i}", prompt, params))[-1]
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        for comp in final.outputs:
            print(prompt + comp.text if args.echo else comp.text, flush=True)
            if len(prompts) > 1 or len(final.outputs) > 1:
                print("-" * 40, flush=True)


def _chat_turn(engine: Any, turn: int, prompt_text: str, params: SamplingParams) -> str:
    tokenizer = engine.tokenizer
    ids = list(tokenizer(prompt_text, add_special_tokens=False).input_ids)
    reply = []
    for output in _run(
        engine, f"chat-{turn}", {"prompt": prompt_text, "prompt_token_ids": ids}, params
    ):
        delta = output.outputs[0].text if output.outputs else ""
        reply.append(delta)
        print(delta, end="", flush=True)
    print(flush=True)
    return "".join(reply)


def cmd_chat(args: argparse.Namespace) -> None:
    from pagedllm.entrypoints.chat_utils import load_chat_template, render_chat

    engine = _make_engine(args)
    template = load_chat_template(args.chat_template)
    params = sampling_params_from_namespace(args, n=1, output_kind=RequestOutputKind.DELTA)
    system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    messages: list[dict[str, Any]] = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print("pagedllm chat: /clear starts over, /exit (or Ctrl-D) quits.")
    for turn, line in enumerate(_read_lines(interactive)):
        text = line.strip()
        if text in ("/exit", "/quit", "exit", "quit"):
            break
        if text == "/clear":
            messages = list(system)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        try:
            reply = _chat_turn(
                engine, turn, render_chat(engine.tokenizer, messages, template), params
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})


def _read_lines(interactive: bool) -> Iterator[str]:
    while True:
        try:
            yield input("> " if interactive else "")
        except EOFError:
            return


def cmd_bench(argv: list[str]) -> None:
    if not argv or argv[0] not in BENCHMARKS:
        raise SystemExit(f"usage: pagedllm bench {{{','.join(BENCHMARKS)}}} [flags]")
    module = importlib.import_module(BENCHMARKS[argv[0]])
    module.main(argv[1:])


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pagedllm", description="pagedllm: LLM inference and serving"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="Start the OpenAI-compatible server.")
    _add_model_positional(serve)
    add_server_args(serve)
    add_engine_args(serve)
    generate = sub.add_parser("generate", help="Generate text offline.")
    generate.add_argument("--prompt", action="append", help="A prompt (repeat for several).")
    generate.add_argument("--echo", action="store_true", help="Print the prompt before the output.")
    add_sampling_args(generate, max_tokens=64)
    add_engine_args(generate)
    chat = sub.add_parser("chat", help="Chat interactively with the model (offline).")
    _add_model_positional(chat)
    chat.add_argument("--system-prompt", type=str, default=None)
    chat.add_argument("--chat-template", type=str, default=None)
    add_sampling_args(chat, max_tokens=256)
    add_engine_args(chat)
    sub.add_parser(
        "bench", help="Benchmarks: pagedllm bench {throughput,latency,cpu-chat,serve} --help"
    )
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "serve": cmd_serve,
    "generate": cmd_generate,
    "chat": cmd_chat,
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        cmd_bench(argv[1:])
        return
    args = make_parser().parse_args(argv)
    if getattr(args, "model_tag", None):
        args.model = args.model_tag
    COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
