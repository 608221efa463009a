"""Fused CPU ops (C++ extensions built on first use)."""
