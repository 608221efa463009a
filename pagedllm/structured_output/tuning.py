"""Thresholds the grammar backends share (module attributes, so that tests can move
them: the parallel and the one-row-at-a-time fills must give the same bits)."""

from __future__ import annotations

# From this many constrained rows a step's bitmask is filled on the backend's own
# thread pool (llguidance's LLExecutor, xgrammar's BatchGrammarMatcher; both drop the
# GIL); below it a plain loop on the calling thread is cheaper than the hand-off.
PARALLEL_FILL_MIN_ROWS = 16
