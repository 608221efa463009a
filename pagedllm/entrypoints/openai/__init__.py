"""The OpenAI-compatible HTTP server (vLLM's routes, bodies and errors)."""
