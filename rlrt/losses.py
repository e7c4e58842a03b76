"""The canonical-correlation loss `L_CCA` of deep CCA (Andrew et al., 2013)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


def _whitening_factor(covariance: Tensor) -> Tensor:
    """Lower Cholesky factor `L` with `L L^T = covariance` `(d, d)`.

    `L^{-1}` whitens like `S^{-1/2}` up to a rotation, which leaves the canonical correlations (the
    singular values below) unchanged; unlike an eigendecomposition its gradient has no
    `1 / (lambda_i - lambda_j)` terms, so repeated eigenvalues (a batch smaller than `d`, constant
    columns) do not make it blow up.
    """
    factor, info = torch.linalg.cholesky_ex(covariance)
    if bool(info.any()):  # not positive definite in floating point: add jitter, once
        eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
        scale = covariance.diagonal().abs().mean().clamp(min=1.0)
        factor = torch.linalg.cholesky(covariance + 1e-6 * scale * eye)
    return factor


def _unit_average_variance(centred: Tensor, n: int) -> Tensor:
    """Scale a centred view `(B, d)` so its per-column variances average 1 (zero stays zero).

    Canonical correlations do not depend on the scale; the ridge does. Fixing the scale makes `r`
    mean the same for any feature magnitude, and keeps the whitening well conditioned (a ridge of
    1e-3 against variances of 1e12 would leave rounding noise as large as the correlations).
    """
    mean_variance = centred.pow(2).sum() / (max(n - 1, 1) * centred.shape[1])
    # A floor before the square root: its gradient at 0 is infinite (constant views), and a view
    # this flat is constant for CCA's purposes; scaling it up further would only amplify noise.
    return centred / mean_variance.clamp(min=1e-12).sqrt()


def canonical_correlations(x: Tensor, y: Tensor, r: float = 1e-3) -> Tensor:
    """The regularised canonical correlations of two views, largest first.

    With centred `X (B, d_x)`, `Y (B, d_y)`, each scaled to unit average column variance
    (canonical correlations are scale-free; this makes the ridge relative to the features' scale):
    `S_xx = X^T X / (B - 1) + r I`, `S_yy` likewise,
    `S_xy = X^T Y / (B - 1)`; the correlations are the singular values of
    `F = S_xx^{-1/2} S_xy S_yy^{-1/2}`. Computed in float64.

    Returns:
        `(min(d_x, d_y),)` float64.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"cca needs (B, d) inputs with one B, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    n = x.shape[0]
    x = _unit_average_variance(x - x.mean(dim=0, keepdim=True), n)
    y = _unit_average_variance(y - y.mean(dim=0, keepdim=True), n)
    denom = max(n - 1, 1)
    eye_x = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    eye_y = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
    s_xx = x.T @ x / denom + r * eye_x
    s_yy = y.T @ y / denom + r * eye_y
    s_xy = x.T @ y / denom
    l_x = _whitening_factor(s_xx)
    l_y = _whitening_factor(s_yy)
    # F = L_x^{-1} S_xy L_y^{-T}: two triangular solves instead of explicit inverses.
    left = torch.linalg.solve_triangular(l_x, s_xy, upper=False)  # L_x^{-1} S_xy
    whitened = torch.linalg.solve_triangular(l_y, left.T, upper=False).T  # (d_x, d_y)
    # svdvals' gradient is U V^T: finite even for repeated or zero singular values. Correlations
    # lie in [0, 1]; with huge values against a tiny ridge the whitening is ill-conditioned and
    # rounding can push one just past 1, so clamp.
    return torch.linalg.svdvals(whitened).clamp(max=1.0)


def cca_loss(x: Tensor, y: Tensor, r: float = 1e-3, top_k: int | None = None) -> Tensor:
    """`L_CCA = -trace((F^T F)^{1/2})`: minus the sum of the canonical correlations.

    Args:
        x: `(B, d)` one view (e.g. the image side `h_i`).
        y: `(B, d)` the other view (`h_t`).
        r: ridge added to both covariances; keeps them invertible for any batch.
        top_k: sum only the `k` largest correlations (useful when `B <= d`, where the smallest
            `d - B + 1` carry nothing and the others reach 1 trivially).

    Returns:
        A float64 scalar in `[-min(d, B - 1), 0]`, finite for any finite input.
    """
    correlations = canonical_correlations(x, y, r)
    if top_k is not None:
        correlations = correlations[:top_k]
    return -correlations.sum()


class CCALoss(nn.Module):
    """`L_CCA` averaged over layer pairs, with a one-time warning for training batches too small
    for CCA.

    Args:
        r: covariance ridge.
        top_k: use only the `k` largest correlations; None uses all.
    """

    def __init__(self, *, r: float = 1e-3, top_k: int | None = None) -> None:
        super().__init__()
        self.r = r
        self.top_k = top_k
        self._warned = False

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        """image, text: `(L_s, B, d)` -> float64 scalar, the mean over the `L_s` layer pairs."""
        batch, dim = image.shape[1], image.shape[2]
        # Only while training: there the loss steers learning; in evaluation a short last batch
        # just reports a number.
        if self.training and batch <= dim and self.top_k is None and not self._warned:
            warnings.warn(
                f"L_CCA on a batch of {batch} <= common width {dim}: the sample covariances are "
                "rank-deficient and most canonical correlations reach 1 trivially. Use a larger "
                "batch (cheap from the feature cache), a smaller common_dim, or cca_top_k < batch.",
                stacklevel=2,
            )
            self._warned = True
        losses = [cca_loss(i, t, self.r, self.top_k) for i, t in zip(image, text)]
        return torch.stack(losses).mean()
