"""Callbacks: seeded perturbations (missing modality, noise), the results table, the prediction
writer. The perturbations edit the batch dict in place with the pure functions of `perturb`."""

from callbacks.missing import MissingModality
from callbacks.noise import ModalityNoise
from callbacks.predictions import PredictionWriter
from callbacks.results_table import ResultsTable

__all__ = ["MissingModality", "ModalityNoise", "PredictionWriter", "ResultsTable"]
