"""Evaluation metrics: the task's scores and the held-out alignment `cca_corr`."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score

from rlrt.losses import correlations_from_covariances, is_constant_view, mean_correlation


def make_metrics(task: str, num_classes: int) -> MetricCollection:
    """F1-micro and F1-macro at a 0.5 threshold (multi-label), or accuracy (multi-class)."""
    if task == "multilabel":
        return MetricCollection(
            {
                "f1_micro": MultilabelF1Score(num_labels=num_classes, average="micro"),
                "f1_macro": MultilabelF1Score(num_labels=num_classes, average="macro"),
            }
        )
    return MetricCollection({"acc": MulticlassAccuracy(num_classes=num_classes, average="micro")})


def is_reported(name: str) -> bool:
    """Whether a metric (stage prefix removed) belongs in result tables: the task's scores and
    `cca_corr`, not the losses nor the per-layer correlations (`metrics.json` keeps those)."""
    return not name.endswith("loss") and not name.startswith("cca_corr_layer")


class HeldOutCorrelation(Metric):
    """Mean (top-k mean) canonical correlation of two views over a whole split, per layer pair.

    Sums of `x`, `y`, `x x^T`, `y y^T`, `x y^T` are accumulated in float64 over every batch (and
    summed over processes), so the correlations rest on the whole split, not on one batch. With
    fewer samples than `dim + 1` the correlations would be 1 whatever the features; `compute`
    then gives NaN rather than a number that looks meaningful.

    Args:
        num_layers: `L_s`. dim: width `d` of both views.
        r: relative ridge (as in the loss). top_k: average only the `k` largest correlations.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, *, num_layers: int, dim: int, r: float = 1e-3, top_k: int | None = None):
        super().__init__()
        self.r = r
        self.top_k = top_k
        f64 = torch.float64
        self.add_state("count", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_x", torch.zeros(num_layers, dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_y", torch.zeros(num_layers, dim, dtype=f64), dist_reduce_fx="sum")
        for name in ("sum_xx", "sum_yy", "sum_xy"):
            self.add_state(name, torch.zeros(num_layers, dim, dim, dtype=f64), dist_reduce_fx="sum")

    def update(self, x: Tensor, y: Tensor) -> None:
        """x, y: `(L_s, B, d)`, the two views of `B` samples."""
        x = x.detach().to(torch.float64)
        y = y.detach().to(torch.float64)
        self.count += x.shape[1]
        self.sum_x += x.sum(1)
        self.sum_y += y.sum(1)
        self.sum_xx += x.mT @ x
        self.sum_yy += y.mT @ y
        self.sum_xy += x.mT @ y

    def compute(self) -> Tensor:
        """`(L_s,)` float64: each layer pair's mean (top-k mean) correlation; NaN if too few."""
        n = self.count
        if n.item() <= self.sum_x.shape[-1]:
            return torch.full(self.sum_x.shape[:1], float("nan"), dtype=torch.float64)
        mean_x, mean_y = self.sum_x / n, self.sum_y / n
        s_xx = self.sum_xx / n - mean_x[..., :, None] * mean_x[..., None, :]
        s_yy = self.sum_yy / n - mean_y[..., :, None] * mean_y[..., None, :]
        s_xy = self.sum_xy / n - mean_x[..., :, None] * mean_y[..., None, :]
        correlations = correlations_from_covariances(s_xx, s_yy, s_xy, self.r)
        constant = is_constant_view(s_xx, mean_x) | is_constant_view(s_yy, mean_y)
        return mean_correlation(correlations, self.top_k).masked_fill(constant, 0.0)
