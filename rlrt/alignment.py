"""Out-of-sample alignment: canonical directions fitted on one set of samples, scored on another.

`cca_corr` used to solve the CCA on the split it reported, which scores high on noise alone when
the split holds few samples per dimension (300 samples at `d_c = 32`: 0.28 for independent
noise). Here the directions come from the training features (`FitMoments`) and the reported
split only scores them, so independent noise scores about 0 at any size; `noise_floor` says how
high noise of the same shapes reaches by chance (docs/design.md, "Held-out alignment").

Everything works on moments (count, means, covariances), which sum over batches and processes.
MoLT's LayerNorm makes one direction of each `h` constant; `ones_complement_basis` removes it
(`Moments.without_ones`), so `d_c - 1` directions remain and a perfect alignment scores 1.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from rlrt.basis import ones_complement_basis
from rlrt.losses import _ridge, _whitening_factor, is_constant_view, mean_correlation

# The noise floor is this quantile of the score of independent Gaussian views, from NOISE_DRAWS
# seeded draws (the same shapes always give the same floor).
NOISE_QUANTILE = 0.95
NOISE_DRAWS = 100
NOISE_SEED = 0
# Wider than this (with at least 10 fitted samples per direction) the floor is the Gaussian
# approximation: a simulation costs `NOISE_DRAWS * (2 d)^3` (30 s on a CPU core at d = 255).
SIMULATED_MAX_DIM = 64


class Moments(NamedTuple):
    """The moments of two views: `count ()`, `mean_x (..., d_x)`, `mean_y (..., d_y)` and the
    covariances `s_xx (..., d_x, d_x)`, `s_yy`, `s_xy (..., d_x, d_y)` (divided by `count`)."""

    count: Tensor
    mean_x: Tensor
    mean_y: Tensor
    s_xx: Tensor
    s_yy: Tensor
    s_xy: Tensor

    @classmethod
    def from_sums(cls, count, sum_x, sum_y, sum_xx, sum_yy, sum_xy) -> Moments:  # noqa: ANN001
        """From the sums of `x`, `y`, `x x^T`, `y y^T`, `x y^T` over `count` samples."""
        n = count.clamp(min=1.0)
        mx, my = sum_x / n, sum_y / n
        return cls(
            count,
            mx,
            my,
            sum_xx / n - mx[..., :, None] * mx[..., None, :],
            sum_yy / n - my[..., :, None] * my[..., None, :],
            sum_xy / n - mx[..., :, None] * my[..., None, :],
        )

    def without_ones(self) -> Moments:
        """The moments of `x Q`, `y Q` (`Q = ones_complement_basis`): one dimension fewer."""
        q = ones_complement_basis(self.mean_x.shape[-1], self.s_xx.dtype, self.s_xx.device)
        return Moments(
            self.count,
            self.mean_x @ q,
            self.mean_y @ q,
            q.T @ self.s_xx @ q,
            q.T @ self.s_yy @ q,
            q.T @ self.s_xy @ q,
        )


def canonical_directions(fit: Moments, r: float) -> tuple[Tensor, Tensor, Tensor]:
    """`A (..., d_x, k)`, `B (..., d_y, k)` and the fitted correlations `(..., k)`, largest first.

    The regularised CCA of `fit` (`rlrt.losses.correlations_from_covariances`): with
    `F = L_x^{-1} S_xy L_y^{-T} = U diag(rho) V^T`, the directions are `A = L_x^{-T} U`,
    `B = L_y^{-T} V`, so that `x A` and `y B` are the canonical variates.
    """
    l_x = _whitening_factor(_ridge(fit.s_xx, r))
    l_y = _whitening_factor(_ridge(fit.s_yy, r))
    left = torch.linalg.solve_triangular(l_x, fit.s_xy, upper=False)
    whitened = torch.linalg.solve_triangular(l_y, left.mT, upper=False).mT
    u, rho, vh = torch.linalg.svd(whitened, full_matrices=False)
    a = torch.linalg.solve_triangular(l_x.mT, u, upper=True)
    b = torch.linalg.solve_triangular(l_y.mT, vh.mT, upper=True)
    return a, b, rho


def out_of_sample_correlations(fit: Moments, held_out: Moments, r: float) -> Tensor:
    """`(..., k)`: the correlation on `held_out` of each pair of canonical variates fitted on
    `fit`, in the fit's order (largest fitted correlation first). Signed: a direction that does
    not carry over scores about 0 (or below), not its in-sample value. No ridge on `held_out`:
    these are plain correlations of fixed linear features; 0 where a variate has no variance."""
    a, b, _ = canonical_directions(fit, r)
    cross = (a * (held_out.s_xy @ b)).sum(-2)  # diag(A^T S_xy B)
    var_x = (a * (held_out.s_xx @ a)).sum(-2)
    var_y = (b * (held_out.s_yy @ b)).sum(-2)
    scale = (var_x * var_y).clamp(min=0).sqrt()
    return torch.where(scale > 0, cross / scale.clamp(min=1e-300), torch.zeros_like(cross))


def out_of_sample_score(
    fit: Moments, held_out: Moments, r: float, top_k: int | None = None
) -> Tensor:
    """`(...,)`: the mean (top-k mean, by fitted order) out-of-sample correlation.

    NaN when either set has no more samples than dimensions (nothing was fitted, or nothing
    could be scored), 0 where a view is constant in either set.
    """
    dim = fit.mean_x.shape[-1]
    batch_shape = fit.mean_x.shape[:-1]
    if fit.count.item() <= dim or held_out.count.item() <= dim:
        return torch.full(batch_shape, float("nan"), dtype=torch.float64)
    constant = (
        is_constant_view(fit.s_xx, fit.mean_x)
        | is_constant_view(fit.s_yy, fit.mean_y)
        | is_constant_view(held_out.s_xx, held_out.mean_x)
        | is_constant_view(held_out.s_yy, held_out.mean_y)
    )
    score = mean_correlation(out_of_sample_correlations(fit, held_out, r), top_k)
    return score.masked_fill(constant, 0.0)


def _noise_moments(rng: np.random.Generator, count: int, dim: int, draws: int) -> Moments:
    """Moments of `draws` pairs of independent standard Gaussian views of `count` samples.

    The joint sample covariance of `2 dim` independent Gaussians is Wishart: drawn directly by
    Bartlett's decomposition when `count - 1 >= 2 dim` (no `count x dim` samples needed), else
    from samples. The means do not enter the correlations; they are drawn as they would be.
    """
    width = 2 * dim
    dof = count - 1
    if dof >= width:
        factor = np.tril(rng.standard_normal((draws, width, width)), k=-1)
        diagonal = np.sqrt(rng.chisquare(dof - np.arange(width), size=(draws, width)))
        factor[:, np.arange(width), np.arange(width)] = diagonal
        joint = factor @ factor.transpose(0, 2, 1) / count
    else:
        samples = rng.standard_normal((draws, count, width))
        samples -= samples.mean(axis=1, keepdims=True)
        joint = samples.transpose(0, 2, 1) @ samples / count
    joint = torch.from_numpy(joint)
    means = torch.from_numpy(rng.standard_normal((draws, width)) / np.sqrt(count))
    return Moments(
        torch.tensor(float(count), dtype=torch.float64),
        means[:, :dim],
        means[:, dim:],
        joint[:, :dim, :dim],
        joint[:, dim:, dim:],
        joint[:, :dim, dim:],
    )


def noise_floor(
    n_fit: int,
    n_held_out: int,
    dim: int,
    r: float,
    top_k: int | None = None,
    *,
    draws: int = NOISE_DRAWS,
    quantile: float = NOISE_QUANTILE,
    seed: int = NOISE_SEED,
) -> float:
    """How high `out_of_sample_score` reaches on independent noise of the same shapes.

    The `quantile` of the score of independent standard Gaussian views, `dim` wide, fitted on
    `n_fit` samples and scored on `n_held_out`, with the same ridge and top-k, over `draws`
    seeded draws (deterministic; the median of this null is about 0). Wider than
    `SIMULATED_MAX_DIM` with `n_fit >= 10 dim`: `z_quantile / sqrt(k (n_held_out - 1))`, the
    quantile of a mean of `k` independent correlations of `n_held_out` samples (what the
    simulation approaches when the fitted directions are well determined; within 10-20% of it
    at `d = 64`, the size of the simulation's own Monte Carlo error). NaN when either size is
    too small for a score.
    """
    if n_fit <= dim or n_held_out <= dim:
        return float("nan")
    if dim > SIMULATED_MAX_DIM and n_fit >= 10 * dim:
        k = dim if top_k is None else min(top_k, dim)
        return NormalDist().inv_cdf(quantile) / math.sqrt(k * (n_held_out - 1))
    rng = np.random.default_rng(seed)
    fit = _noise_moments(rng, n_fit, dim, draws)
    held_out = _noise_moments(rng, n_held_out, dim, draws)
    scores = out_of_sample_score(fit, held_out, r, top_k)
    return float(torch.quantile(scores, quantile))


class FitMoments(nn.Module):
    """Sums of two views' training features, per layer pair, that `cca_corr` fits its canonical
    directions on. Float64 buffers, part of the checkpoint (a test run scores with the
    directions of the checkpoint's own training epoch).

    `local_*` hold this process's samples since the last `pool`; `pool` adds the sums of every
    process (all-reduce under DDP) to `pooled_*`. Updates are tensor ops only (no host
    synchronisation in a training step).

    Args:
        num_layers: `L_s`. dim: width `d` of both views.
    """

    NAMES = ("count", "sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy")

    def __init__(self, *, num_layers: int, dim: int) -> None:
        super().__init__()
        shapes = {
            "count": (),
            "sum_x": (num_layers, dim),
            "sum_y": (num_layers, dim),
            "sum_xx": (num_layers, dim, dim),
            "sum_yy": (num_layers, dim, dim),
            "sum_xy": (num_layers, dim, dim),
        }
        for scope in ("local", "pooled"):
            for name, shape in shapes.items():
                self.register_buffer(f"{scope}_{name}", torch.zeros(shape, dtype=torch.float64))

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # `.float()` / `.half()` / precision plugins must not round the float64 sums.
        saved = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, old in saved.items():
            if self._buffers[name].dtype != old.dtype:
                self._buffers[name] = old.to(device=self._buffers[name].device)
        return self

    def _sums(self, scope: str) -> list[Tensor]:
        return [getattr(self, f"{scope}_{name}") for name in self.NAMES]

    def reset(self) -> None:
        """Forget every sum (a new training epoch starts)."""
        for buffer in self._sums("local") + self._sums("pooled"):
            buffer.zero_()

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, weight: Tensor) -> None:
        """x, y: `(L_s, B, d)`; weight: `(B,)` 1 for the samples that count, 0 for the others."""
        x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
        weight = weight.to(torch.float64)
        wx, wy = x * weight[:, None], y * weight[:, None]
        for buffer, value in zip(
            self._sums("local"),
            (weight.sum(), wx.sum(1), wy.sum(1), wx.mT @ x, wy.mT @ y, wx.mT @ y),
        ):
            buffer.add_(value)

    @torch.no_grad()
    def pool(self) -> None:
        """Add every process's local sums to the pooled ones (a collective under DDP: call it on
        every process) and clear the local ones."""
        local = self._sums("local")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([s.reshape(-1) for s in local])
            dist.all_reduce(flat)
            parts = flat.split([s.numel() for s in local])
            local = [part.view_as(s) for part, s in zip(parts, local)]
        for pooled, total in zip(self._sums("pooled"), local):
            pooled.add_(total)
        for buffer in self._sums("local"):
            buffer.zero_()

    def moments(self, *, include_local: bool = False) -> Moments:
        """The pooled sums as `Moments` (with this process's unpooled ones: a checkpoint loaded
        for testing holds the same on every process, nothing to all-reduce)."""
        sums = self._sums("pooled")
        if include_local:
            sums = [p + q for p, q in zip(sums, self._sums("local"))]
        return Moments.from_sums(*sums)
