"""`L_CCA`, its running estimator and the held-out `cca_corr`, against independent NumPy
computations of canonical correlations."""

import numpy as np
import pytest
import torch

from rlrt.losses import (
    RunningCCALoss,
    canonical_correlations,
    cca_loss,
    correlations_from_covariances,
)
from rlrt.metrics import HeldOutCorrelation


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


def numpy_weighted_correlations(x, y, weights, r):
    """Canonical correlations of weighted samples, by an explicit loop over the samples."""
    weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    mean_x = sum(w * row for w, row in zip(weights, x))
    mean_y = sum(w * row for w, row in zip(weights, y))
    s_xx = sum(w * np.outer(a - mean_x, a - mean_x) for w, a in zip(weights, x))
    s_yy = sum(w * np.outer(b - mean_y, b - mean_y) for w, b in zip(weights, y))
    s_xy = sum(w * np.outer(a - mean_x, b - mean_y) for w, a, b in zip(weights, x, y))
    s_xx = s_xx + r * np.trace(s_xx) / len(mean_x) * np.eye(len(mean_x))
    s_yy = s_yy + r * np.trace(s_yy) / len(mean_y) * np.eye(len(mean_y))

    def inv_sqrt(s):
        values, vectors = np.linalg.eigh(s)
        return vectors @ np.diag(values**-0.5) @ vectors.T

    return np.linalg.svd(inv_sqrt(s_xx) @ s_xy @ inv_sqrt(s_yy), compute_uv=False)


@pytest.mark.parametrize("n", [5, 40, 500])
def test_matches_numpy_with_regularisation_across_batch_sizes(n):
    x, y = correlated_views(n=n)
    expected = numpy_canonical_correlations(x, y, r=1e-3)
    got = canonical_correlations(torch.tensor(x), torch.tensor(y), r=1e-3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-7, atol=1e-9)
    loss = cca_loss(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert loss.dtype == torch.float64
    np.testing.assert_allclose(loss.item(), 1 - expected.mean(), rtol=1e-5)


def test_approaches_textbook_cca_as_ridge_vanishes():
    x, y = correlated_views(seed=3)
    got = canonical_correlations(torch.tensor(x), torch.tensor(y), r=1e-12)
    np.testing.assert_allclose(got.numpy(), numpy_unregularised_correlations(x, y), atol=1e-8)
    # three shared factors: three strong correlations, the rest weak
    assert got[2] > 0.5 and got[3] < 0.3


def test_scale_free_and_stacked_layers_are_independent_problems():
    x, y = correlated_views(n=300)
    a, b = torch.tensor(x), torch.tensor(y)
    torch.testing.assert_close(
        canonical_correlations(a * 1e6, b * 1e-4), canonical_correlations(a, b)
    )
    stacked = canonical_correlations(torch.stack([a, b]), torch.stack([b, a]))
    torch.testing.assert_close(stacked[0], canonical_correlations(a, b))
    torch.testing.assert_close(stacked[1], canonical_correlations(b, a))


def test_top_k_keeps_the_largest_and_the_loss_is_a_mean():
    x, y = correlated_views()
    full = canonical_correlations(torch.tensor(x), torch.tensor(y))
    torch.testing.assert_close(
        cca_loss(torch.tensor(x), torch.tensor(y), top_k=2), 1 - full[:2].mean()
    )
    torch.testing.assert_close(cca_loss(torch.tensor(x), torch.tensor(y)), 1 - full.mean())


@pytest.mark.parametrize(
    "make",
    [
        lambda: (torch.randn(4, 16), torch.randn(4, 16)),  # batch smaller than d
        lambda: (torch.ones(32, 8), torch.randn(32, 8)),  # a constant view
        lambda: (torch.ones(32, 8) + 1e-6 * torch.randn(32, 8), torch.randn(32, 8)),  # nearly
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
    assert -1e-9 <= loss.item() <= 1.0 + 1e-9


def test_a_constant_view_contributes_nothing_rather_than_a_huge_gradient():
    torch.manual_seed(0)
    flat = (torch.ones(64, 8) + 1e-5 * torch.randn(64, 8)).requires_grad_(True)
    other = torch.randn(64, 8, requires_grad=True)
    loss = cca_loss(flat, other)
    loss.backward()
    assert loss.item() == 1.0  # no correlation at all
    assert flat.grad.abs().max() == 0 and other.grad.abs().max() == 0
    # one constant layer of two: the other layer's correlations are still there
    x, y = correlated_views(n=64, d=8)
    stacked = canonical_correlations(
        torch.stack([flat.detach().double(), torch.tensor(x)]),
        torch.stack([other.detach().double(), torch.tensor(y)]),
    )
    assert stacked[0].abs().max() == 0
    torch.testing.assert_close(stacked[1], canonical_correlations(torch.tensor(x), torch.tensor(y)))


def test_small_batches_reach_trivial_correlations():
    """The reason for the running window: with B <= d every correlation is 1 on pure noise."""
    x, y = torch.randn(8, 32), torch.randn(8, 32)
    correlations = canonical_correlations(x, y, r=1e-9)
    assert correlations[:7].min() > 0.99


def test_covariance_route_matches_samples_route():
    x, y = correlated_views(n=200, d=5)
    a, b = torch.tensor(x), torch.tensor(y)
    s = torch.cov(torch.cat([a, b], dim=1).T)
    from_cov = correlations_from_covariances(s[:5, :5], s[5:, 5:], s[:5, 5:], 1e-3)
    torch.testing.assert_close(from_cov, canonical_correlations(a, b))


def batches(x, y, size):
    """`(N, d)` arrays -> `(1, size, d)` tensor pairs, one per batch."""
    for start in range(0, len(x), size):
        yield (
            torch.tensor(x[None, start : start + size]),
            torch.tensor(y[None, start : start + size]),
        )


def test_running_loss_pools_every_sample_until_the_window_fills():
    x, y = correlated_views(n=480, d=6, seed=1)
    loss = RunningCCALoss(num_layers=1, dim=6, window=1000, warmup_samples=0)
    for a, b in batches(x, y, 48):
        value = loss(a, b)
    assert loss.seen.item() == 480
    expected = numpy_weighted_correlations(x, y, np.ones(len(x)), r=1e-3)
    np.testing.assert_allclose(1 - value.item(), expected.mean(), rtol=1e-9)


def test_running_loss_forgets_with_the_window_weights():
    """Once the window is full, a batch of B enters with weight B / window (slow loop reference)."""
    x, y = correlated_views(n=600, d=4, seed=2)
    y[300:] = -y[300:] + np.random.default_rng(0).normal(size=(300, 4))  # the relation changes
    size, window = 50, 200
    loss = RunningCCALoss(num_layers=1, dim=4, window=window, warmup_samples=0)
    weights = np.zeros(0)
    for a, b in batches(x, y, size):
        value = loss(a, b)
        seen = len(weights)
        w = min(max(size / window, size / (seen + size)), 1.0)
        weights = np.concatenate([weights * (1 - w), np.full(size, w / size)])
    expected = numpy_weighted_correlations(x, y, weights, r=1e-3)
    np.testing.assert_allclose(1 - value.item(), expected.mean(), rtol=1e-9)


def test_running_loss_first_step_is_the_batch_loss_with_its_gradient():
    x, y = correlated_views(n=64, d=5)
    a = torch.tensor(x, requires_grad=True)
    b = torch.tensor(y, requires_grad=True)
    running = RunningCCALoss(num_layers=1, dim=5, window=4096, warmup_samples=0)(a[None], b[None])
    (grad_running,) = torch.autograd.grad(running, a)
    batch = cca_loss(a, b)
    (grad_batch,) = torch.autograd.grad(batch, a)
    torch.testing.assert_close(running, batch)
    torch.testing.assert_close(grad_running, grad_batch)


def test_running_gradient_is_the_batch_covariances_gradient_at_the_running_value():
    """d loss / d x_batch = dC/dS (at the running S) * dS_batch/dx (autograd on an explicit
    construction: running covariances as constants, the batch's as functions of x, centred on
    the running means after this batch)."""
    x, y = correlated_views(n=256, d=4, seed=5)
    loss = RunningCCALoss(num_layers=1, dim=4, window=512, warmup_samples=0)
    for a, b in batches(x[:192], y[:192], 64):
        loss(a, b)
    a = torch.tensor(x[None, 192:], requires_grad=True)
    b = torch.tensor(y[None, 192:])
    value = loss(a, b)
    (got,) = torch.autograd.grad(value, a)
    s_run = [s.clone() for s in loss.running_covariances()]  # after this batch, constants

    def explicit(a):
        ac = a[0] - loss.mean_x[0]
        bc = b[0] - loss.mean_y[0]
        s_b = (ac.T @ ac / 64, bc.T @ bc / 64, ac.T @ bc / 64)
        s = [r[0] + sb - sb.detach() for r, sb in zip(s_run, s_b)]
        return 1 - correlations_from_covariances(*s, 1e-3).mean()

    (expected,) = torch.autograd.grad(explicit(a), a)
    torch.testing.assert_close(got, expected)
    np.testing.assert_allclose(value.item(), explicit(a).item(), rtol=1e-12)


def test_running_gradient_size_does_not_depend_on_the_batch():
    """Like a batch-mean task loss, each sample's gradient scales as 1 / B at any B."""
    rng = np.random.default_rng(0)

    def per_sample_gradient(batch):
        loss = RunningCCALoss(num_layers=1, dim=8, window=2048, warmup_samples=0)
        for _ in range(2048 // batch):
            shared = rng.normal(size=(batch, 8))
            a = torch.tensor((shared + rng.normal(size=(batch, 8)))[None], requires_grad=True)
            b = torch.tensor((shared + rng.normal(size=(batch, 8)))[None])
            (grad,) = torch.autograd.grad(loss(a, b), a)
        return grad.norm().item() * batch**0.5  # RMS per-sample gradient times B

    small, large = per_sample_gradient(32), per_sample_gradient(512)
    assert 0.7 < small / large < 1.4


def test_running_loss_waits_for_enough_samples_and_then_sees_structure():
    torch.manual_seed(0)
    loss = RunningCCALoss(num_layers=2, dim=8, window=400)
    assert loss.warmup_samples == 80
    shared = torch.randn(2, 32, 8)
    first = loss(shared + torch.randn(2, 32, 8), shared + torch.randn(2, 32, 8))
    assert first.item() == 0.0 and loss.seen.item() == 32
    for _ in range(20):
        shared = torch.randn(2, 32, 8)
        correlated = loss(
            shared + 0.3 * torch.randn(2, 32, 8), shared + 0.3 * torch.randn(2, 32, 8)
        )
        noise = RunningCCALoss(num_layers=2, dim=8, window=400)
    for _ in range(20):
        independent = noise(torch.randn(2, 32, 8), torch.randn(2, 32, 8))
    assert 1 - correlated.item() > 0.85
    assert 1 - independent.item() < 0.2  # 640 noise samples for 8 dimensions: little spurious


def test_running_statistics_stay_float64_and_resume_from_a_state_dict():
    loss = RunningCCALoss(num_layers=1, dim=4, window=100, warmup_samples=0)
    x, y = correlated_views(n=64, d=4)
    loss(torch.tensor(x[None]), torch.tensor(y[None]))
    loss.half()
    assert loss.second_xx.dtype == torch.float64
    restored = RunningCCALoss(num_layers=1, dim=4, window=100, warmup_samples=0)
    restored.load_state_dict(loss.state_dict())
    more = torch.tensor(x[None, :32]), torch.tensor(y[None, :32])
    torch.testing.assert_close(restored(*more), loss(*more))


def test_evaluation_leaves_the_running_statistics_alone():
    loss = RunningCCALoss(num_layers=1, dim=4, window=100).eval()
    x, y = correlated_views(n=64, d=4)
    value = loss(torch.tensor(x[None]), torch.tensor(y[None]))
    assert loss.seen.item() == 0
    torch.testing.assert_close(value, cca_loss(torch.tensor(x), torch.tensor(y)))


def test_held_out_correlation_accumulates_the_whole_split():
    x, y = correlated_views(n=900, d=6, seed=4)
    metric = HeldOutCorrelation(num_layers=2, dim=6)
    for start in range(0, 900, 128):  # uneven last batch
        a, b = torch.tensor(x[start : start + 128]), torch.tensor(y[start : start + 128])
        metric.update(torch.stack([a, b]), torch.stack([b, a]))
    got = metric.compute()
    expected = numpy_canonical_correlations(x, y, r=1e-3).mean()
    np.testing.assert_allclose(got.numpy(), [expected, expected], rtol=1e-8)


def test_held_out_correlation_of_perfect_and_independent_views():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8))
    mixing = np.linalg.qr(rng.normal(size=(8, 8)))[0] * 3.0  # well conditioned: the ridge is 1e-3
    metric = HeldOutCorrelation(num_layers=2, dim=8)
    independent = rng.normal(size=(2000, 8))
    for start in range(0, 2000, 100):
        rows = slice(start, start + 100)
        a = torch.tensor(x[rows])
        metric.update(
            torch.stack([a, a]),
            torch.stack([a @ torch.tensor(mixing), torch.tensor(independent[rows])]),
        )
    perfect, none = metric.compute().tolist()
    assert perfect > 0.99
    assert none < 0.1
    few = HeldOutCorrelation(num_layers=1, dim=8)
    few.update(torch.randn(1, 8, 8), torch.randn(1, 8, 8))
    assert torch.isnan(few.compute()).all()  # 8 samples for 8 dimensions: no number at all


def test_samples_that_do_not_count_are_weighted_out_exactly_as_if_left_out():
    """`present` masks samples by weight (no host synchronisation); the running statistics, the
    loss and its gradient equal those of a twin fed only the present samples."""
    x, y = correlated_views(n=96, d=4, seed=7)
    present = torch.from_numpy(np.random.default_rng(1).random(96) < 0.6)
    present[:2] = True
    masked = RunningCCALoss(num_layers=1, dim=4, window=64, warmup_samples=0)
    selected = RunningCCALoss(num_layers=1, dim=4, window=64, warmup_samples=0)
    for start in (0, 32, 64):  # three steps: the window fills, then slides
        part = slice(start, start + 32)
        xa = torch.tensor(x[None, part], requires_grad=True)
        ya = torch.tensor(y[None, part])
        keep = present[part]
        xb = torch.tensor(x[None, part][:, keep.numpy()], requires_grad=True)
        yb = torch.tensor(y[None, part][:, keep.numpy()])
        value_masked = masked(xa, ya, keep)
        value_selected = selected(xb, yb)
        torch.testing.assert_close(value_masked, value_selected, rtol=1e-10, atol=1e-12)
        value_masked.backward()
        value_selected.backward()
        torch.testing.assert_close(xa.grad[:, keep], xb.grad, rtol=1e-8, atol=1e-12)
        assert torch.all(xa.grad[:, ~keep] == 0)  # a sample that does not count gets no gradient
    for name, buffer in masked.state_dict().items():
        torch.testing.assert_close(buffer, selected.state_dict()[name], rtol=1e-12, atol=1e-12)


def test_a_batch_with_fewer_than_two_counting_samples_is_zero_and_moves_no_statistics():
    loss = RunningCCALoss(num_layers=1, dim=4, window=64, warmup_samples=0)
    x, y = correlated_views(n=64, d=4)
    loss(torch.tensor(x[None]), torch.tensor(y[None]))
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    none = torch.zeros(8, dtype=torch.bool)
    assert loss(torch.tensor(x[None, :8]), torch.tensor(y[None, :8]), none).item() == 0.0
    for name, buffer in loss.state_dict().items():
        assert torch.equal(buffer, before[name]), name
    one = none.clone()
    one[3] = True
    assert loss(torch.tensor(x[None, :8]), torch.tensor(y[None, :8]), one).item() == 0.0
    assert loss.seen.item() == before["seen"].item() + 1
