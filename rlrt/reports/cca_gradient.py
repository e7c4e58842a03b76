"""What the running `L_CCA` gradient is, measured (docs/design.md, "L_CCA").

    python -m rlrt.reports.cca_gradient [--steps 3000]

On synthetic views with a known population, `x = [s, e_x] theta` (`theta = [I; I]` at the point
measured, so `x = s + e_x`) and `y = s + e_y` (per-direction correlation 0.5), with the gradient
taken w.r.t. `theta` (which could shrink the noise in `x`), it prints:

1. how far the gradient of one step is from `1 / w` times the exact derivative of the running
   value (autograd through the running update, batch included), with the batch centred on the
   running means (`RunningCCALoss`) and on its own mean (the estimator before issue 25);
2. the bias of the mean gradient over many steps against the population gradient (the gradient
   of the correlations on 200,000 samples), at `d = 8`, batch 32, windows 256 and 4096;
3. the noise share of a single step's gradient, `E|g - mean g|^2 / E|g|^2`, at the demo's sizes
   (`d_c = 32`, batch 64, window 512).

Seeded; about a minute on a CPU core. Nothing is asserted: the numbers are for the design notes
(tests/test_cca_fidelity.py checks the exact relation of point 1).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from rlrt.losses import RunningCCALoss, _covariances_about, cca_loss, correlations_from_covariances


def views(rng: np.random.Generator, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(n, 2 d)` raw `[s, e_x]` and `(n, d)` `y = s + e_y`: with `THETA(d)`, views whose
    directions each correlate 0.5 in the population."""
    shared = rng.standard_normal((n, d))
    raw = np.concatenate([shared, rng.standard_normal((n, d))], axis=1)
    y = shared + rng.standard_normal((n, d))
    return torch.from_numpy(raw), torch.from_numpy(y)


def theta0(d: int) -> torch.Tensor:
    """`(2 d, d)` `[I; I]`, with a gradient."""
    eye = torch.eye(d, dtype=torch.float64)
    return torch.cat([eye, eye]).requires_grad_(True)


def step_gradients(loss: RunningCCALoss, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN201
    """One training step on `(B, 2 d)` raw features and `(B, d)` `y`: the gradient w.r.t.
    `theta` of the module's loss, the old estimator's (batch centred on its own mean), and
    `1 / w` times the exact derivative of the running value."""
    d = y.shape[1]
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    theta = theta0(d)
    (new,) = torch.autograd.grad(loss((x @ theta)[None], y[None]), theta)
    running = [s.detach() for s in loss.running_covariances()]

    # the old estimator: both views centred on the batch's own means (a centre's own gradient
    # vanishes then, so a detached one gives the same)
    theta = theta0(d)
    ones = torch.ones(x.shape[0], dtype=torch.float64)
    centres = (x @ theta.detach()).mean(0)[None], y.mean(0)[None]
    batch = _covariances_about((x @ theta)[None], y[None], ones, *centres)
    s = [r + (b - b.detach()) for r, b in zip(running, batch)]
    value = 1 - correlations_from_covariances(*s, loss.r).mean()
    (old,) = torch.autograd.grad(value, theta)
    # exact: the running update as a function of theta, this batch folded in
    theta = theta0(d)
    b = x.shape[0]
    seen = before["seen"]
    w = min(max(b / loss.window, b / (seen.item() + b)), 1.0)
    xt = x @ theta
    mx = (1 - w) * before["mean_x"][0] + w * xt.mean(0)
    my = (1 - w) * before["mean_y"][0] + w * y.mean(0)
    sxx = (1 - w) * before["second_xx"][0] + w * xt.T @ xt / b - torch.outer(mx, mx)
    syy = (1 - w) * before["second_yy"][0] + w * y.T @ y / b - torch.outer(my, my)
    sxy = (1 - w) * before["second_xy"][0] + w * xt.T @ y / b - torch.outer(mx, my)
    value = 1 - correlations_from_covariances(sxx, syy, sxy, loss.r).mean()
    (exact,) = torch.autograd.grad(value, theta)
    return new, old, exact / w


def relative(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """`|a - b| / |b|` and the cosine of `a` and `b`."""
    error = ((a - b).norm() / b.norm()).item()
    cosine = (a.flatten() @ b.flatten() / (a.norm() * b.norm())).item()
    return error, cosine


def population_gradient(rng: np.random.Generator, d: int, n: int = 200_000) -> torch.Tensor:
    x, y = views(rng, n, d)
    theta = theta0(d)
    return torch.autograd.grad(cca_loss(x @ theta, y), theta)[0]


def stream(d: int, batch: int, window: int, steps: int, seed: int) -> torch.Tensor:
    """`(steps, d, d)`: the module's gradient at each step after a burn-in of 4 windows."""
    rng = np.random.default_rng(seed)
    loss = RunningCCALoss(num_layers=1, dim=d, window=window, warmup_samples=0)
    for _ in range(4 * window // batch):
        raw, y = views(rng, batch, d)
        loss((raw @ theta0(d).detach())[None], y[None])
    grads = []
    for _ in range(steps):
        x, y = views(rng, batch, d)
        theta = theta0(d)
        grads.append(torch.autograd.grad(loss((x @ theta)[None], y[None]), theta)[0])
    return torch.stack(grads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlrt.reports.cca_gradient")
    parser.add_argument("--steps", type=int, default=3000, help="steps averaged in 2 and 3")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print("1. one step against 1/w x the exact derivative of the running value")
    for d, batch, window in [(8, 32, 256), (32, 64, 512)]:
        rng = np.random.default_rng(0)
        loss = RunningCCALoss(num_layers=1, dim=d, window=window, warmup_samples=0)
        for _ in range(2 * window // batch):
            raw, y = views(rng, batch, d)
        loss((raw @ theta0(d).detach())[None], y[None])
        new_errors, old_errors, old_cosines = [], [], []
        for _ in range(20):
            new, old, exact = step_gradients(loss, *views(rng, batch, d))
            new_errors.append(relative(new, exact)[0])
            error, cosine = relative(old, exact)
            old_errors.append(error)
            old_cosines.append(cosine)
        print(
            f"   d={d} B={batch} W={window}: running-mean centring: relative error "
            f"{max(new_errors):.1e} (max of 20 steps); batch-mean centring: "
            f"{min(old_errors):.2f}-{max(old_errors):.2f}, cosine "
            f"{min(old_cosines):.3f}-{max(old_cosines):.3f}"
        )

    print("2. bias of the mean gradient against the population gradient (d=8, B=32)")
    truth = population_gradient(np.random.default_rng(1), 8)
    for window in (256, 4096):
        grads = stream(8, 32, window, args.steps, seed=2)
        mean = grads.mean(0)
        # standard error of the mean from 10 consecutive blocks (steps share their window)
        blocks = torch.stack([b.mean(0) for b in grads.chunk(10)])
        error = (blocks.std(0).norm() / 10**0.5 / truth.norm()).item()
        bias, cosine = relative(mean, truth)
        print(
            f"   W={window}: |mean - population| / |population| = {bias:.2f} "
            f"(+- {error:.2f} Monte Carlo), cosine {cosine:.3f}, over {args.steps} steps"
        )

    print("3. noise share of one step's gradient at the demo's sizes (d=32, B=64, W=512)")
    grads = stream(32, 64, 512, max(args.steps // 3, 200), seed=3)
    mean = grads.mean(0)
    noise = ((grads - mean) ** 2).sum((1, 2)).mean() / (grads**2).sum((1, 2)).mean()
    print(f"   E|g - mean g|^2 / E|g|^2 = {noise.item():.2f}")


if __name__ == "__main__":
    main()
