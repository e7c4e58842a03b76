"""Evaluation metrics: the task's scores and the held-out alignment `cca_corr`."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score

from rlrt.alignment import Moments, out_of_sample_score
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


def stage_metrics(task: str, num_classes: int) -> tuple[MetricCollection, MetricCollection]:
    """The task's metrics of the validation and the test split (`val/...`, `test/...`)."""
    metrics = make_metrics(task, num_classes)
    return metrics.clone(prefix="val/"), metrics.clone(prefix="test/")


def is_reported(name: str) -> bool:
    """Whether a metric (stage prefix removed) belongs in result tables: the task's scores,
    `cca_corr` and its `cca_corr_noise_floor`, not the losses nor the per-layer correlations
    (`metrics.json` keeps those)."""
    return not name.endswith("loss") and not name.startswith("cca_corr_layer")


class HeldOutCorrelation(Metric):
    """Canonical correlation of two views over a whole split, per layer pair.

    Sums of `x`, `y`, `x x^T`, `y y^T`, `x y^T` are accumulated in float64 over every batch (and
    summed over processes), so the correlations rest on the whole split, not on one batch.

    - `out_of_sample(fit)` (what `cca_corr` reports): the canonical directions fitted on other
      samples' moments (the training features), scored on this split
      (`rlrt.alignment.out_of_sample_score`); independent noise scores about 0 at any size.
    - `compute()`: the CCA solved on this split itself (in sample). It scores high on noise
      alone unless the split holds many samples per dimension; kept for comparison.

    With no more samples than dimensions either gives NaN rather than a number that looks
    meaningful.

    Args:
        num_layers: `L_s`. dim: width `d` of both views.
        r: relative ridge (as in the loss). top_k: average only the `k` largest correlations.
        drop_constant: remove the ones direction first (`Moments.without_ones`): MoLT's
            LayerNorm makes one direction of `h` constant, whose correlation is always 0.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        *,
        num_layers: int,
        dim: int,
        r: float = 1e-3,
        top_k: int | None = None,
        drop_constant: bool = False,
    ):
        super().__init__()
        self.r = r
        self.top_k = top_k
        self.drop_constant = drop_constant
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

    def moments(self) -> Moments:
        """This split's moments (this process's share; `compute` and `out_of_sample` sync),
        without the ones direction when `drop_constant`."""
        moments = Moments.from_sums(
            self.count, self.sum_x, self.sum_y, self.sum_xx, self.sum_yy, self.sum_xy
        )
        return moments.without_ones() if self.drop_constant else moments

    @property
    def width(self) -> int:
        """The number of directions scored: `d`, or `d - 1` with `drop_constant`."""
        return self.sum_x.shape[-1] - int(self.drop_constant)

    def compute(self) -> Tensor:
        """`(L_s,)` float64: each layer pair's in-sample mean (top-k mean) correlation; NaN if
        too few samples."""
        moments = self.moments()
        if moments.count.item() <= self.width:
            return torch.full(self.sum_x.shape[:1], float("nan"), dtype=torch.float64)
        _, mean_x, mean_y, s_xx, s_yy, s_xy = moments
        correlations = correlations_from_covariances(s_xx, s_yy, s_xy, self.r)
        constant = is_constant_view(s_xx, mean_x) | is_constant_view(s_yy, mean_y)
        return mean_correlation(correlations, self.top_k).masked_fill(constant, 0.0)

    def out_of_sample(self, fit: Moments) -> Tensor:
        """`(L_s,)` float64: the mean (top-k mean) correlation on this split (summed over the
        processes) of the canonical directions fitted on `fit` (raw moments, `d` wide: the ones
        direction is removed here when `drop_constant`); NaN if either has too few samples."""
        if self.drop_constant:
            fit = fit.without_ones()
        with self.sync_context(should_sync=True, should_unsync=True):
            held_out = self.moments()
        return out_of_sample_score(fit, held_out, self.r, self.top_k)
