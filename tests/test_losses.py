"""`cca_loss` against an independent NumPy computation of canonical correlations."""

import numpy as np
import pytest
import torch

from rlrt.losses import CCALoss, canonical_correlations, cca_loss


def numpy_canonical_correlations(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Textbook route: symmetric inverse square roots by eigendecomposition, then an SVD."""
    n = x.shape[0]
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    x = x / np.sqrt(np.mean(np.var(x, axis=0, ddof=1)))  # the ridge is relative to the scale
    y = y / np.sqrt(np.mean(np.var(y, axis=0, ddof=1)))
    s_xx = x.T @ x / (n - 1) + r * np.eye(x.shape[1])
    s_yy = y.T @ y / (n - 1) + r * np.eye(y.shape[1])
    s_xy = x.T @ y / (n - 1)

    def inv_sqrt(s):
        values, vectors = np.linalg.eigh(s)
        return vectors @ np.diag(values**-0.5) @ vectors.T

    t = inv_sqrt(s_xx) @ s_xy @ inv_sqrt(s_yy)
    return np.linalg.svd(t, compute_uv=False)


def numpy_unregularised_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bjorck-Golub: canonical correlations are the singular values of Q_x^T Q_y."""
    qx, _ = np.linalg.qr(x - x.mean(axis=0))
    qy, _ = np.linalg.qr(y - y.mean(axis=0))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def correlated_views(n=500, d=6, seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 3))
    x = shared @ rng.normal(size=(3, d)) + 0.5 * rng.normal(size=(n, d))
    y = shared @ rng.normal(size=(3, d)) + 0.8 * rng.normal(size=(n, d))
    return x, y


def test_matches_numpy_with_regularisation():
    x, y = correlated_views()
    expected = numpy_canonical_correlations(x, y, r=1e-3)
    got = canonical_correlations(torch.tensor(x), torch.tensor(y), r=1e-3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-10)
    loss = cca_loss(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert loss.dtype == torch.float64
    np.testing.assert_allclose(loss.item(), -expected.sum(), rtol=1e-5)


def test_approaches_textbook_cca_as_ridge_vanishes():
    x, y = correlated_views(seed=3)
    got = canonical_correlations(torch.tensor(x), torch.tensor(y), r=1e-12)
    np.testing.assert_allclose(got.numpy(), numpy_unregularised_correlations(x, y), atol=1e-8)
    # three shared factors: three strong correlations, the rest weak
    assert got[2] > 0.5 and got[3] < 0.3


def test_top_k_keeps_the_largest():
    x, y = correlated_views()
    full = canonical_correlations(torch.tensor(x), torch.tensor(y))
    top = cca_loss(torch.tensor(x), torch.tensor(y), top_k=2)
    torch.testing.assert_close(top, -full[:2].sum())


@pytest.mark.parametrize(
    "make",
    [
        lambda: (torch.randn(4, 16), torch.randn(4, 16)),  # batch smaller than d
        lambda: (torch.ones(32, 8), torch.randn(32, 8)),  # constant columns
        lambda: (torch.randn(1, 8), torch.randn(1, 8)),  # a single sample
        lambda: (torch.randn(16, 8) * 1e6, torch.randn(16, 8)),  # very large values
        lambda: (torch.randn(16, 8).half(), torch.randn(16, 8).half()),
    ],
)
def test_finite_loss_and_gradients_on_degenerate_batches(make):
    x, y = make()
    x = x.float().requires_grad_(True)
    y = y.float().requires_grad_(True)
    loss = cca_loss(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert -min(x.shape[1], max(x.shape[0] - 1, 0)) - 1e-6 <= loss.item() <= 1e-9


def test_small_batch_reaches_trivial_correlations_and_warns_once():
    x, y = torch.randn(8, 32), torch.randn(8, 32)
    correlations = canonical_correlations(x, y, r=1e-9)
    assert correlations[:7].min() > 0.99  # B - 1 correlations reach 1 from noise alone
    import warnings

    module = CCALoss().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module(x[None], y[None])  # evaluating (a short last batch, say): nothing to warn about
    module.train()
    with pytest.warns(UserWarning, match="rank-deficient"):
        module(x[None], y[None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module(x[None], y[None])  # no second warning


def test_module_averages_over_layers():
    x, y = correlated_views(n=200, d=4)
    a = torch.tensor(x)
    b = torch.tensor(y)
    module = CCALoss(r=1e-3)
    stacked = module(torch.stack([a, b]), torch.stack([b, a]))
    torch.testing.assert_close(stacked, (cca_loss(a, b) + cca_loss(b, a)) / 2)
