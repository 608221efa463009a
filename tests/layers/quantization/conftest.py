"""Quantization tests reuse the paged harness and tiny configs of tests/models."""

import sys
from pathlib import Path

_MODELS_TESTS = str(Path(__file__).resolve().parents[2] / "models")
if _MODELS_TESTS not in sys.path:
    sys.path.insert(0, _MODELS_TESTS)
