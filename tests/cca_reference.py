"""Independent NumPy references for the alignment tests: CCA by eigendecomposition (not the
Cholesky route the package takes), canonical variates scored with `np.corrcoef`."""

from __future__ import annotations

import numpy as np


def ones_complement(d: int) -> np.ndarray:
    """`(d, d - 1)`: an orthonormal basis of the complement of the ones vector, from the SVD of
    the centring matrix (any such basis gives the same canonical correlations)."""
    u, _, _ = np.linalg.svd(np.eye(d) - np.full((d, d), 1.0 / d))
    return u[:, : d - 1]


def _inv_sqrt(s: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(s)
    return vectors @ np.diag(values**-0.5) @ vectors.T


def _ridged(s: np.ndarray, r: float) -> np.ndarray:
    return s + r * np.trace(s) / len(s) * np.eye(len(s))


def canonical_fit(x: np.ndarray, y: np.ndarray, r: float = 1e-3):
    """`(N, d)` views -> directions `A (d, k)`, `B (d, k)` and correlations `(k,)`, largest
    first (covariances divided by N, ridge relative to each view's mean variance)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = len(x)
    wx = _inv_sqrt(_ridged(xc.T @ xc / n, r))
    wy = _inv_sqrt(_ridged(yc.T @ yc / n, r))
    u, rho, vt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy)
    k = min(x.shape[1], y.shape[1])
    return wx @ u[:, :k], wy @ vt.T[:, :k], rho[:k]


def out_of_sample(fit_x, fit_y, x, y, r=1e-3, top_k=None, drop_ones=False) -> float:
    """The mean (top-k mean) correlation on `(x, y)` of the canonical variates fitted on
    `(fit_x, fit_y)`, each scored by `np.corrcoef`."""
    if drop_ones:
        q = ones_complement(x.shape[1])
        fit_x, fit_y, x, y = fit_x @ q, fit_y @ q, x @ q, y @ q
    a, b, _ = canonical_fit(fit_x, fit_y, r)
    scores = [np.corrcoef(x @ a[:, j], y @ b[:, j])[0, 1] for j in range(a.shape[1])]
    return float(np.mean(scores[:top_k]))


def in_sample(x, y, r=1e-3, drop_ones=False) -> float:
    """The mean regularised canonical correlation of `(x, y)` fitted on themselves."""
    if drop_ones:
        q = ones_complement(x.shape[1])
        x, y = x @ q, y @ q
    return float(canonical_fit(x, y, r)[2].mean())


def layer_norm(z: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis (eps 1e-5, biased variance, as torch's)."""
    centred = z - z.mean(-1, keepdims=True)
    return centred / np.sqrt(centred.var(-1, keepdims=True) + 1e-5) * gain + bias
