"""Moved to `rlrt.tiny_encoders` (run-time smoke runs and benchmarks use them too)."""

from rlrt.tiny_encoders import write_tiny_llama, write_tiny_vit_config  # noqa: F401
