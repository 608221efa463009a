"""Structured outputs: a grammar per constrained request (JSON schema, regex, choice,
Lark/EBNF grammar), compiled by a backend (llguidance, or xgrammar), advanced with
every accepted token, and turned into a token bitmask each step that the sampler
applies to the logits. See manager.py for how the engine core drives it."""

from pagedllm.structured_output.manager import StructuredOutputManager
from pagedllm.structured_output.request import StructuredOutputRequest
from pagedllm.structured_output.validate import validate_structured_outputs

__all__ = ["StructuredOutputManager", "StructuredOutputRequest", "validate_structured_outputs"]
