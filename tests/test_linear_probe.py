"""The image-only linear probe (rlrt.reports.linear_probe) on synthetic data."""

import numpy as np
import torch

from rlrt.reports.linear_probe import L2_GRID, f1_scores, fit_probe, linear_probe


def separable(n, seed, num_classes=4, dim=12, noise=0.05):
    """Multi-hot labels and features `labels @ A + noise`: each class a linear direction."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(0).normal(size=(num_classes, dim))
    y = (rng.random((n, num_classes)) < 0.4).astype(np.float64)
    x = y @ directions + noise * rng.normal(size=(n, dim))
    return torch.from_numpy(x), torch.from_numpy(y)


def reference_f1(predicted: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Macro (mean of per-class F1, 0 for a class with no TP, FP or FN) and micro F1, by loops."""
    per_class, tp_all, fp_all, fn_all = [], 0, 0, 0
    for c in range(target.shape[1]):
        tp = sum(1 for p, t in zip(predicted[:, c], target[:, c]) if p and t)
        fp = sum(1 for p, t in zip(predicted[:, c], target[:, c]) if p and not t)
        fn = sum(1 for p, t in zip(predicted[:, c], target[:, c]) if not p and t)
        per_class.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    return float(np.mean(per_class)), 2 * tp_all / (2 * tp_all + fp_all + fn_all)


def test_f1_matches_an_explicit_count():
    rng = np.random.default_rng(3)
    predicted = rng.random((50, 5)) < 0.5
    target = rng.random((50, 5)) < 0.3
    scores = f1_scores(torch.from_numpy(predicted), torch.from_numpy(target).float())
    macro, micro = reference_f1(predicted, target)
    np.testing.assert_allclose([scores["f1_macro"], scores["f1_micro"]], [macro, micro], rtol=1e-6)


def test_the_fit_is_the_regularised_optimum():
    x, y = separable(200, seed=1, noise=1.0)
    probe = fit_probe(x, y, l2=0.1)
    # gradient of mean BCE + l2/2 |W|^2 at the fitted point, in NumPy: zero at the optimum
    z = ((x - probe.mean) / probe.std).numpy()
    p = 1 / (1 + np.exp(-(z @ probe.weight.numpy() + probe.bias.numpy())))
    residual = (p - y.numpy()) / y.numel()
    grad_w = z.T @ residual + 0.1 * probe.weight.numpy()
    grad_b = residual.sum(0)
    assert np.abs(grad_w).max() < 1e-5 and np.abs(grad_b).max() < 1e-5


def test_separable_classes_are_recovered_and_noise_is_not():
    train, val, test = separable(300, 1), separable(100, 2), separable(200, 3)
    scores = linear_probe(train, test, val)
    assert scores["f1_macro"] > 0.97 and scores["l2"] in L2_GRID
    probe = fit_probe(*train, scores["l2"])
    macro, micro = reference_f1(probe.predict(test[0]).numpy(), test[1].numpy() > 0)
    np.testing.assert_allclose([scores["f1_macro"], scores["f1_micro"]], [macro, micro], rtol=1e-6)
    shuffled = (train[0][torch.randperm(300, generator=torch.Generator().manual_seed(0))], train[1])
    assert linear_probe(shuffled, test, val)["f1_macro"] < 0.8
