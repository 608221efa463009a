"""Command-line flags. Engine flags are generated from `dataclasses.fields(EngineArgs)`
(kebab-case, vLLM's names), with the help, choices and short aliases that each field
carries in its metadata (config.engine_arg), so a new EngineArgs field is a new flag."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin, get_type_hints

from pagedllm.config import EngineArgs, StructuredOutputsConfig
from pagedllm.entrypoints.chat_render import RenderLimits
from pagedllm.entrypoints.http_options import (
    DEFAULT_MAX_LOG_LEN,
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    HTTPOptions,
)
from pagedllm.sampling_params import SamplingParams

_HUMAN_INT = re.compile(r"^(\d+(?:\.\d+)?)([kmgtKMGT]?)$")
_MULTIPLIERS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_MULTIPLIERS |= {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_int(value: str) -> int:
    """An int with an optional suffix: k/m/g/t decimal, K/M/G/T binary (vLLM's rule)."""
    match = _HUMAN_INT.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid integer: {value!r}")
    number, suffix = match.groups()
    result = float(number) * _MULTIPLIERS[suffix]
    if result != int(result):
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number")
    return int(result)


def _json_object(value: str) -> dict[str, Any]:
    """A JSON object flag ('{"temperature": 0.5}')."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {value!r}")
    return parsed


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(value: str) -> Any:
        return None if value.lower() == "none" else parse(value)

    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, is Optional) of `X` or `X | None`."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(get_args(annotation))
    return annotation, False


def _add_field(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    f: dataclasses.Field[Any],
    annotation: Any,
    dest_prefix: str = "",
) -> None:
    flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
    inner, optional = _unwrap(annotation)
    kwargs: dict[str, Any] = {
        "dest": dest_prefix + f.name,
        "default": f.default,
        "help": f.metadata.get("help"),
    }
    if inner is bool:
        if f.default is False:
            kwargs["action"] = "store_true"
        else:  # True or None: --flag / --no-flag
            kwargs["action"] = argparse.BooleanOptionalAction
    else:
        parse: Callable[[str], Any] = human_int if inner is int else inner
        if inner is StructuredOutputsConfig:
            parse = StructuredOutputsConfig.from_cli
        if get_origin(inner) is dict:
            parse = _json_object
        kwargs["metavar"] = f.name.upper()
        kwargs["type"] = _optional(parse) if optional else parse
        if f.metadata.get("choices"):
            kwargs["choices"] = [c for c in f.metadata["choices"] if c is not None]
        if f.name == "served_model_name":
            kwargs["nargs"] = "+"
    if kwargs["help"] and f.default not in (None, False) and "action" not in kwargs:
        kwargs["help"] += f" (default: {f.default})"
    parser.add_argument(*flags, **kwargs)


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("engine arguments (vLLM's names)")
    hints = get_type_hints(EngineArgs)
    for f in dataclasses.fields(EngineArgs):
        _add_field(group, f, hints[f.name])  # type: ignore[arg-type]
    return parser


def engine_args_from_namespace(ns: argparse.Namespace) -> EngineArgs:
    kwargs = {
        f.name: getattr(ns, f.name) for f in dataclasses.fields(EngineArgs) if hasattr(ns, f.name)
    }
    names = kwargs.get("served_model_name")
    if isinstance(names, list):
        kwargs["served_model_name"] = names[0] if names else None
    return EngineArgs(**kwargs)


def served_model_names(ns: argparse.Namespace) -> list[str] | None:
    names = getattr(ns, "served_model_name", None)
    if names is None:
        return None
    return [names] if isinstance(names, str) else list(names)


def _list_values(values: list[str]) -> list[str]:
    """vLLM takes a JSON list ('["*"]'); plain words work too (--allowed-origins a b)."""
    result: list[str] = []
    for value in values:
        if value.strip().startswith("["):
            parsed = json.loads(value)
            if not isinstance(parsed, list):
                raise argparse.ArgumentTypeError(f"not a JSON list: {value!r}")
            result.extend(str(v) for v in parsed)
        else:
            result.append(value)
    return result


def add_http_args(group: argparse._ArgumentGroup) -> None:
    """The HTTP flags both servers take (vLLM's names where vLLM has one)."""
    group.add_argument(
        "--api-key",
        type=str,
        default=None,
        help="Require this bearer token on the API routes (also PAGEDLLM_API_KEY or VLLM_API_KEY).",
    )
    group.add_argument(
        "--max-request-body-size",
        type=human_int,
        default=DEFAULT_MAX_REQUEST_BODY_SIZE,
        metavar="BYTES",
        help="Largest request body accepted, in bytes (32M = 32 MiB); larger ones get "
        f"HTTP 413 (default: {DEFAULT_MAX_REQUEST_BODY_SIZE}).",
    )
    for name, what in (("origins", "origins"), ("methods", "methods"), ("headers", "headers")):
        group.add_argument(
            f"--allowed-{name}",
            nargs="+",
            default=["*"],
            help=f"CORS: allowed {what}, as a JSON list or words (default: *).",
        )
    group.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials.")
    group.add_argument(
        "--ssl-keyfile",
        default=None,
        help="TLS: the private key file (with --ssl-certfile: HTTPS).",
    )
    group.add_argument("--ssl-certfile", default=None, help="TLS: the certificate chain file.")
    group.add_argument(
        "--ssl-ca-certs", default=None, help="TLS: CA certificates that client certificates need."
    )
    group.add_argument(
        "--ssl-cert-reqs",
        type=int,
        default=0,
        choices=[0, 1, 2],
        help="TLS: client certificates 0 not asked for, 1 optional, 2 required (default: 0).",
    )
    group.add_argument(
        "--enable-request-id-headers",
        action="store_true",
        help="Answer with an X-Request-Id header: the request's own, else a new one.",
    )
    group.add_argument(
        "--shutdown-timeout",
        type=float,
        default=0.0,
        help="Seconds to let in-flight requests finish after SIGTERM/SIGINT; the rest are "
        "aborted with an error event (default: 0, abort at once).",
    )


def http_options_from_namespace(ns: argparse.Namespace, prefixes: tuple[str, ...]) -> HTTPOptions:
    return HTTPOptions(
        api_key=ns.api_key,
        max_request_body_size=ns.max_request_body_size,
        allowed_origins=_list_values(ns.allowed_origins),
        allowed_methods=_list_values(ns.allowed_methods),
        allowed_headers=_list_values(ns.allowed_headers),
        allow_credentials=ns.allow_credentials,
        api_key_prefixes=prefixes,
        enable_dashboard=not getattr(ns, "disable_dashboard", False),
        enable_request_id_headers=ns.enable_request_id_headers,
    )


def _api_server_count(value: str) -> int:
    count = int(value)
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {count}")
    return count


def add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("server arguments")
    group.add_argument("--host", type=str, default=None, help="Host to bind (default: all).")
    group.add_argument("--port", type=int, default=8000, help="Port (default: 8000).")
    group.add_argument(
        "--api-server-count",
        "-asc",
        type=_api_server_count,
        default=1,
        help="API server processes sharing the listening socket, each with its own front end "
        "(HTTP, tokenization, detokenization), all served by one engine core (default: 1).",
    )
    add_http_args(group)
    group.add_argument(
        "--chat-template", type=str, default=None, help="A chat template file or string."
    )
    group.add_argument(
        "--chat-template-timeout",
        type=float,
        default=RenderLimits.timeout_s,
        help="Seconds a chat template may render before the request gets HTTP 400 "
        f"(default: {RenderLimits.timeout_s:g}).",
    )
    group.add_argument(
        "--chat-template-max-chars",
        type=human_int,
        default=RenderLimits.max_chars,
        help="Most characters a chat template may produce; more is HTTP 400 "
        f"(default: {RenderLimits.max_chars}).",
    )
    group.add_argument(
        "--uvicorn-log-level",
        type=str,
        default="info",
        choices=["debug", "info", "warning", "error", "critical", "trace"],
        help="uvicorn's log level (default: info).",
    )
    group.add_argument("--disable-log-requests", action="store_true", help="Do not log requests.")
    group.add_argument(
        "--max-log-len",
        type=int,
        default=DEFAULT_MAX_LOG_LEN,
        help=f"Most prompt characters a logged request shows (default: {DEFAULT_MAX_LOG_LEN}).",
    )
    group.add_argument(
        "--return-tokens-as-token-ids",
        action="store_true",
        help='Write logprobs\' tokens as "token_id:{id}" (each request may also ask for it).',
    )
    group.add_argument(
        "--disable-fastapi-docs",
        action="store_true",
        help="Do not serve /docs, /redoc and /openapi.json.",
    )
    group.add_argument(
        "--disable-uvicorn-access-log", action="store_true", help="Do not log each HTTP request."
    )
    group.add_argument("--root-path", type=str, default=None, help="ASGI root_path behind a proxy.")
    group.add_argument(
        "--disable-dashboard",
        action="store_true",
        help="Do not serve the live dashboard (/dashboard, /dashboard/snapshot, /dashboard/events).",
    )
    group.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='Allow tool_choice="auto" (needs --tool-call-parser).',
    )
    group.add_argument(
        "--tool-call-parser",
        choices=["hermes", "llama3_json", "mistral", "pythonic"],
        default=None,
        help="How the model writes tool calls (for tool_choice=auto).",
    )
    return parser


# SamplingParams fields offered by `pagedllm generate` / `pagedllm chat` (stop is added by hand).
_SAMPLING_FLAGS = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "max_tokens",
    "min_tokens",
    "ignore_eos",
    "skip_special_tokens",
)
_SAMPLING_PREFIX = "sampling_"


def add_sampling_args(
    parser: argparse.ArgumentParser, max_tokens: int = 16
) -> argparse.ArgumentParser:
    group = parser.add_argument_group("sampling parameters (SamplingParams)")
    hints = get_type_hints(SamplingParams)
    for f in dataclasses.fields(SamplingParams):
        if f.name in _SAMPLING_FLAGS:
            _add_field(group, f, hints[f.name], _SAMPLING_PREFIX)
    group.set_defaults(**{_SAMPLING_PREFIX + "max_tokens": max_tokens})
    group.add_argument("--stop", dest=_SAMPLING_PREFIX + "stop", nargs="+", default=None)
    return parser


def sampling_params_from_namespace(ns: argparse.Namespace, **overrides: Any) -> SamplingParams:
    kwargs = {
        key[len(_SAMPLING_PREFIX) :]: value
        for key, value in vars(ns).items()
        if key.startswith(_SAMPLING_PREFIX)
    }
    return SamplingParams(**{**kwargs, **overrides})


def make_server_parser(
    prog: str | None = None, description: str | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_server_args(parser)
    add_engine_args(parser)
    return parser
