"""Perturbation callbacks: seeded, pure perturbations applied to the batch dict in place."""

from callbacks.missing import MissingModality

__all__ = ["MissingModality"]
