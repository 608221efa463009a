"""The front end's check of a StructuredOutputsParams (no tokenizer needed), so that
an invalid schema, regex or grammar is a ValueError (HTTP 400) before the request
reaches the engine core."""

from __future__ import annotations

import json

from pagedllm.config import StructuredOutputsConfig
from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output.backend_types import StructuredOutputKind
from pagedllm.structured_output.request import grammar_spec


def backend_name(config: StructuredOutputsConfig) -> str:
    return "guidance" if config.backend == "auto" else config.backend


def validate_structured_outputs(
    params: StructuredOutputsParams, config: StructuredOutputsConfig
) -> None:
    """Raise ValueError('structured_outputs.<kind>: <reason>') for a spec the configured
    backend cannot compile."""
    kind, spec = grammar_spec(params)
    field = f"structured_outputs.{kind.value}"
    if kind is StructuredOutputKind.JSON:
        _check_schema_json(spec, field)
    if backend_name(config) == "xgrammar":
        from pagedllm.structured_output.backend_xgrammar import grammar_error
    else:
        from pagedllm.structured_output.backend_guidance import grammar_error
    error = grammar_error(kind, spec, config.disable_any_whitespace)
    if error:
        raise ValueError(f"{field}: invalid {kind.value}: {error.strip()[:500]}")


def _check_schema_json(spec: str, field: str) -> None:
    try:
        schema = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{field}: the schema is not valid JSON: {exc}") from None
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"{field}: a JSON schema must be an object, got {type(schema).__name__}")
