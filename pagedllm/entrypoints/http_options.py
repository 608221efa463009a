"""The HTTP-side options both servers share (cli_args.add_http_args builds them); no
server packages imported here, so the offline CLI runs without fastapi."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

API_KEY_ENV_VARS = ("PAGEDLLM_API_KEY", "VLLM_API_KEY")
DEFAULT_MAX_REQUEST_BODY_SIZE = 32 * 2**20  # 32 MiB: a 20 MB prompt fits
DEFAULT_MAX_LOG_LEN = 200  # prompt characters a logged request shows (--max-log-len)


# The OpenAI server's routes that run the model: /v1/..., and vLLM's /score, /rerank
# and /v2/rerank (/health, /metrics, /ping, /version, /tokenize stay open, as in vLLM).
OPENAI_GUARDED_PREFIXES = ("/v1", "/v2", "/score", "/rerank")


@dataclass
class HTTPOptions:
    api_key: str | None = None
    max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    api_key_prefixes: tuple[str, ...] = OPENAI_GUARDED_PREFIXES  # the routes the key guards
    enable_dashboard: bool = True  # /dashboard (OpenAI server only)
    enable_request_id_headers: bool = False  # X-Request-Id on every response


def resolve_api_key(api_key: str | None) -> str | None:
    """The flag, else PAGEDLLM_API_KEY, else VLLM_API_KEY."""
    if api_key:
        return api_key
    for name in API_KEY_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None
