"""Model classes (HF weight names; see docs/architecture.md for the contract)."""
