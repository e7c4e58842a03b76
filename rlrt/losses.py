"""The canonical-correlation loss `L_CCA` and the maths behind it (docs/design.md, "L_CCA").

Three layers, each usable alone:

- `correlations_from_covariances`: canonical correlations of given (cross-)covariances;
- `canonical_correlations` / `cca_loss`: the same on one set of samples (a batch);
- `RunningCCALoss`: the training loss, whose covariances rest on a window of `window` samples
  carried across steps (stochastic deep CCA), so that the number of samples behind them no longer
  depends on the batch size.

Everything is float64: the whitening is the fragile part.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rlrt.basis import ones_complement_basis

# A view whose average per-column variance is below this fraction of its mean square is constant
# for CCA's purposes: its correlations are noise and their gradient scales as 1 / its spread.
RELATIVE_VARIANCE_FLOOR = 1e-6
# CCA needs many more samples than dimensions; below about ten per dimension independent noise
# alone scores high (B = 32, d = 256: 30.996 of a maximum 31).
SAMPLES_PER_DIMENSION = 10


def _whitening_factor(covariance: Tensor) -> Tensor:
    """Lower Cholesky factor `L` with `L L^T = covariance` `(..., d, d)`.

    `L^{-1}` whitens like `S^{-1/2}` up to a rotation, which leaves the canonical correlations (the
    singular values below) unchanged; unlike an eigendecomposition its gradient has no
    `1 / (lambda_i - lambda_j)` terms, so repeated eigenvalues do not make it blow up.

    A matrix not positive definite in floating point gets a small jitter on its diagonal. Which
    ones do is found by a first, detached factorisation and applied with tensor ops, so nothing
    waits for the device (no host synchronisation) and the others are factored exactly as given.
    """
    _, info = torch.linalg.cholesky_ex(covariance.detach())
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    scale = covariance.detach().diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp(min=1e-300)
    jitter = torch.where(info > 0, 1e-6 * scale, torch.zeros_like(scale))  # (...)
    factor, _ = torch.linalg.cholesky_ex(covariance + jitter[..., None, None] * eye)
    return factor


def _ridge(covariance: Tensor, r: float) -> Tensor:
    """`S + r * mean_variance(S) * I` `(..., d, d)`: a ridge relative to the view's own scale.

    Canonical correlations do not depend on the features' scale; a relative ridge keeps it so
    (an absolute 1e-3 against variances of 1e12 would leave rounding noise as large as the
    correlations) and keeps the whitening equally well conditioned at any magnitude.
    """
    d = covariance.shape[-1]
    mean_variance = covariance.diagonal(dim1=-2, dim2=-1).sum(-1) / d  # (...)
    eye = torch.eye(d, dtype=covariance.dtype, device=covariance.device)
    return covariance + r * mean_variance[..., None, None] * eye


def correlations_from_covariances(s_xx: Tensor, s_yy: Tensor, s_xy: Tensor, r: float) -> Tensor:
    """The regularised canonical correlations, largest first.

    With `S_xx (..., d_x, d_x)`, `S_yy (..., d_y, d_y)`, `S_xy (..., d_x, d_y)` and relative ridges
    (`_ridge`), the correlations are the singular values of `F = S_xx^{-1/2} S_xy S_yy^{-1/2}`,
    computed as `L_x^{-1} S_xy L_y^{-T}` with Cholesky factors (two triangular solves). The scale
    of the covariances does not matter (dividing them all by `N` or `N - 1` gives the same result).

    Returns:
        `(..., min(d_x, d_y))`, each in `[0, 1]`; float64 if the inputs are.
    """
    l_x = _whitening_factor(_ridge(s_xx, r))
    l_y = _whitening_factor(_ridge(s_yy, r))
    left = torch.linalg.solve_triangular(l_x, s_xy, upper=False)  # L_x^{-1} S_xy
    whitened = torch.linalg.solve_triangular(l_y, left.mT, upper=False).mT  # (..., d_x, d_y)
    # svdvals' gradient is U V^T: finite even for repeated or zero singular values. Rounding can
    # push a correlation a hair past 1 when the whitening is ill-conditioned, so clamp.
    return torch.linalg.svdvals(whitened).clamp(max=1.0)


def is_constant_view(covariance: Tensor, mean: Tensor) -> Tensor:
    """`(..., d, d), (..., d) -> (...)` bool: the view's spread is below the relative floor.

    The mean square of the raw values is `mean variance + mean^2` (per column, averaged).
    """
    variance = covariance.diagonal(dim1=-2, dim2=-1).mean(-1)
    mean_square = variance + mean.pow(2).mean(-1)
    return variance <= RELATIVE_VARIANCE_FLOOR * mean_square


def _centred_covariances(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`(N, d_x), (N, d_y)` -> `S_xx, S_yy, S_xy` centred on the sample means, divided by `N`."""
    n = x.shape[-2]
    x = x - x.mean(dim=-2, keepdim=True)
    y = y - y.mean(dim=-2, keepdim=True)
    return x.mT @ x / n, y.mT @ y / n, x.mT @ y / n


def _covariances_about(
    x: Tensor, y: Tensor, weight: Tensor, centre_x: Tensor, centre_y: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """`(..., B, d_x), (..., B, d_y), (B,)` 0/1 weights, centres `(..., d_x), (..., d_y)` ->
    `S_xx, S_yy, S_xy` of the weighted samples about the given centres, divided by their count
    (all zero when none counts): those of the selected samples `x[..., keep, :]`.

    `RunningCCALoss` centres a batch on the (detached) running means: then the batch's gradient
    is exactly `1 / w` times the derivative of the running covariances (docs/design.md)."""
    count = weight.sum().clamp(min=1.0)
    w = weight[:, None]
    x = (x - centre_x[..., None, :]) * w
    y = (y - centre_y[..., None, :]) * w
    return x.mT @ x / count, y.mT @ y / count, x.mT @ y / count


def _world_size() -> int:
    """The number of DDP processes (1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _correlations_or_zero(
    s_xx: Tensor, s_yy: Tensor, s_xy: Tensor, mean_x: Tensor, mean_y: Tensor, r: float
) -> Tensor:
    """Canonical correlations `(..., k)`, zero (and no gradient) where a view is constant.

    The constant views are computed on an identity stand-in and masked out (the stand-in's
    gradient is multiplied by zero and never reaches the real features): tensor ops only, so the
    training step never waits for the device to say which views are constant.
    """
    constant = is_constant_view(s_xx, mean_x) | is_constant_view(s_yy, mean_y)  # (...)
    eye = torch.eye(s_xx.shape[-1], dtype=s_xx.dtype, device=s_xx.device)
    eye_y = torch.eye(s_yy.shape[-1], dtype=s_yy.dtype, device=s_yy.device)
    keep = ~constant[..., None, None]
    correlations = correlations_from_covariances(
        torch.where(keep, s_xx, eye),
        torch.where(keep, s_yy, eye_y),
        torch.where(keep, s_xy, torch.zeros_like(s_xy)),
        r,
    )
    return correlations * (~constant)[..., None]


def canonical_correlations(x: Tensor, y: Tensor, r: float = 1e-3) -> Tensor:
    """The regularised canonical correlations of two views given as samples, largest first.

    Args:
        x: `(N, d_x)` (or `(..., N, d_x)` for a stack of independent problems).
        y: `(N, d_y)`, the same `N`.
        r: ridge, relative to each view's mean variance.

    Returns:
        `(min(d_x, d_y),)` float64 (with the leading dimensions of a stack). All zero when a view
        is constant (below the relative variance floor).
    """
    if x.ndim < 2 or x.ndim != y.ndim or x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"cca needs (N, d) inputs with one N, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    s_xx, s_yy, s_xy = _centred_covariances(x, y)
    return _correlations_or_zero(s_xx, s_yy, s_xy, x.mean(-2), y.mean(-2), r)


def mean_correlation(correlations: Tensor, top_k: int | None = None) -> Tensor:
    """`(..., k) -> (...)`: the mean of the `top_k` largest correlations (all when None)."""
    if top_k is not None:
        correlations = correlations[..., :top_k]
    return correlations.mean(dim=-1)


def cca_loss(x: Tensor, y: Tensor, r: float = 1e-3, top_k: int | None = None) -> Tensor:
    """`L_CCA` on one set of samples: one minus the mean (top-k mean) canonical correlation.

    The mean, not deep CCA's sum `trace((F^T F)^{1/2})`: a sum over up to `d` correlations would
    make the loss weight `beta` mean something different at every width. `1 - mean` rather than
    `-mean` has the same gradient and keeps every loss the project reports non-negative.

    Args:
        x, y: `(N, d)` the two views (e.g. `h_i`, `h_t`).
        r: relative ridge. top_k: average only the `k` largest correlations.

    Returns:
        A float64 scalar in `[0, 1]`, finite for any finite input (1 when a view is constant).
    """
    return 1.0 - mean_correlation(canonical_correlations(x, y, r), top_k)


def minimum_samples(dim: int) -> int:
    """The fewest samples behind the covariances for a `dim`-wide CCA to mean anything."""
    return SAMPLES_PER_DIMENSION * dim


def check_cca_window(*, common_dim: int, window: int, beta: float, allow: bool) -> None:
    """Refuse (`ValueError`, one line) an `L_CCA` whose covariances would rest on too few
    samples to mean anything, unless `allow`; nothing to check when `beta` is 0."""
    if beta != 0 and window < minimum_samples(common_dim) and not allow:
        raise ValueError(
            f"L_CCA would rest on cca_window={window} samples for common_dim={common_dim}; "
            f"canonical correlations need at least {minimum_samples(common_dim)} (10 per "
            "dimension) to mean anything: raise model.cca_window or lower model.common_dim "
            "(model.cca_allow_degenerate=true runs it anyway)"
        )


class RunningCCALoss(nn.Module):
    """`L_CCA` per layer pair on covariances carried across steps (stochastic deep CCA).

    Each layer pair keeps exponentially weighted first and second moments of `h_i`, `h_t` in
    float64. A batch of `B` samples enters with weight `w = max(B / window, B / seen)` (a plain
    average until `window` samples have been seen, then a window of about `window` samples).

    - value: the canonical correlations of the running covariances, this batch included;
    - gradient: through this batch's own covariances about the running means,
      `dC/dS (at the running S) * dS_batch`: exactly `1 / w` times the derivative of the running
      value, so its size does not depend on `B` (docs/design.md says what it is not: unbiased
      for the population's correlations).

    Until `warmup_samples` samples have been seen the loss is zero (the statistics still fill).
    Under DDP the detached batch moments are summed over the processes, so every process holds the
    same running statistics; each process's gradient is weighted by its share of the step's
    samples that count (`world * n_p / N`), so that DDP's average is the gradient one process
    would compute on the whole step's batch.

    With `drop_constant` the ones direction is removed from both views first (`d - 1`
    directions, `rlrt.alignment.ones_complement_basis`): MoLT's LayerNorm makes one direction of
    `h` constant, and its correlation, always 0, would cap the mean at `(d - 1) / d`.

    Outside training (`eval()`) the running statistics are left alone and the loss is computed on
    the batch alone.

    Args:
        num_layers: `L_s`. dim: `d_c`, the width of both views.
        window: samples the covariances rest on.
        r: relative ridge. top_k: average only the `k` largest correlations.
        warmup_samples: samples to see before the loss starts; default `minimum_samples(dim)`,
            capped at `window`.
        drop_constant: remove the ones direction from both views (see above).
    """

    def __init__(
        self,
        *,
        num_layers: int,
        dim: int,
        window: int = 4096,
        r: float = 1e-3,
        top_k: int | None = None,
        warmup_samples: int | None = None,
        drop_constant: bool = False,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"the CCA window must be a positive number of samples, got {window}")
        directions = dim - int(drop_constant)
        if top_k is not None and not 1 <= top_k <= directions:
            raise ValueError(
                f"cca_top_k must be in [1, {directions}] (common_dim={dim}"
                + (", less the constant direction of the LayerNorm" if drop_constant else "")
                + f"), got {top_k}"
            )
        self.window = window
        self.r = r
        self.top_k = top_k
        self.drop_constant = drop_constant
        default_warmup = min(minimum_samples(dim), window)
        self.warmup_samples = default_warmup if warmup_samples is None else warmup_samples
        f64 = torch.float64
        # Persistent buffers: they are part of the training state and resume exactly.
        self.register_buffer("seen", torch.zeros((), dtype=f64))
        self.register_buffer("mean_x", torch.zeros(num_layers, dim, dtype=f64))
        self.register_buffer("mean_y", torch.zeros(num_layers, dim, dtype=f64))
        self.register_buffer("second_xx", torch.zeros(num_layers, dim, dim, dtype=f64))
        self.register_buffer("second_yy", torch.zeros(num_layers, dim, dim, dtype=f64))
        self.register_buffer("second_xy", torch.zeros(num_layers, dim, dim, dtype=f64))
        self._known_active = False

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # `.float()` / `.half()` / precision plugins must not round the float64 statistics.
        saved = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, old in saved.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:  # cast back from the unrounded original
                self._buffers[name] = old.to(device=new.device)
        return self

    def reset(self) -> None:
        """Forget the running statistics."""
        for buffer in (self.seen, self.mean_x, self.mean_y):
            buffer.zero_()
        for buffer in (self.second_xx, self.second_yy, self.second_xy):
            buffer.zero_()
        self._known_active = False

    @torch.no_grad()
    def _update(self, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        """Fold the detached batch `(L, B, d)`, its samples weighted by `weight` `(B,)` (1 for the
        samples that count, 0 for the others), into the moments; the sums over DDP processes.
        Returns the step's number of samples that count, over every process.

        Tensor ops only: a batch with no sample that counts leaves the moments as they are
        without the host asking the device how many there were."""
        wx, wy = x * weight[:, None], y * weight[:, None]
        sums = [weight.sum(), wx.sum(1), wy.sum(1), wx.mT @ x, wy.mT @ y, wx.mT @ y]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([s.reshape(-1) for s in sums])
            dist.all_reduce(flat)
            sums = [part.view_as(s) for part, s in zip(flat.split([s.numel() for s in sums]), sums)]
        count = sums[0]
        share = torch.maximum(count / self.window, count / (self.seen + count).clamp(min=1.0))
        share = share.clamp(max=1.0)  # 0 when count is 0
        for buffer, total in zip(
            (self.mean_x, self.mean_y, self.second_xx, self.second_yy, self.second_xy), sums[1:]
        ):
            buffer.mul_(1 - share).add_(share * total / count.clamp(min=1.0))
        self.seen += count
        return count

    @property
    def active(self) -> bool:
        """Whether the statistics rest on enough samples for the loss to count. Asked of the
        device only until it is so (`seen` never shrinks in training): no host synchronisation
        once the loss is on."""
        if not self._known_active:
            self._known_active = bool(self.seen >= max(self.warmup_samples, 2))
        return self._known_active

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._known_active = False  # another `seen`: ask again

    def running_covariances(self) -> tuple[Tensor, Tensor, Tensor]:
        """`S_xx, S_yy, S_xy`, each `(L, d, d)`, from the running moments."""
        mx, my = self.mean_x, self.mean_y
        return (
            self.second_xx - mx[..., :, None] * mx[..., None, :],
            self.second_yy - my[..., :, None] * my[..., None, :],
            self.second_xy - mx[..., :, None] * my[..., None, :],
        )

    def _project(self, matrices: tuple[Tensor, ...], means: tuple[Tensor, Tensor]):  # noqa: ANN202
        """Covariances `(L, d, d)` and means `(L, d)` without the ones direction (`d - 1`), or
        as they are without `drop_constant`."""
        if not self.drop_constant:
            return matrices, means
        q = ones_complement_basis(means[0].shape[-1], means[0].dtype, means[0].device)
        return tuple(q.T @ m @ q for m in matrices), tuple(m @ q for m in means)

    def forward(self, x: Tensor, y: Tensor, present: Tensor | None = None) -> Tensor:
        """x, y: `(L_s, B, d)` -> float64 scalar in `[0, 1]`: one minus the mean correlation,
        averaged over layers; 0 (no gradient) while the statistics fill (`active` is False) and
        for a batch with fewer than 2 samples that count (under DDP: the value is 0 on a process
        with fewer than 2, the gradient on every process when the step has fewer than 2 in all).

        `present` `(B,)` bool marks the samples that count (those with both modalities); None:
        all. They are weighted, not selected: selecting by a mask needs the host to learn how many
        there are, which stalls a GPU every step.

        Call it on every training step, also with fewer than 2 samples (then only the statistics
        are shared with the other DDP processes): skipping a call on one process would stall the
        others.
        """
        x = x.to(torch.float64)
        y = y.to(torch.float64)
        if present is None:
            present = torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
        if not self.training:
            x, y = x[:, present], y[:, present]
            if x.shape[1] < 2:
                return x.new_zeros(())
            if self.drop_constant:
                q = ones_complement_basis(x.shape[-1], x.dtype, x.device)
                x, y = x @ q, y @ q
            return 1.0 - mean_correlation(canonical_correlations(x, y, self.r), self.top_k).mean()
        weight = present.to(torch.float64)
        pooled = self._update(x.detach(), y.detach(), weight)
        if not self.active:
            return x.sum() * 0.0  # zero, in the graph
        # About the running means (detached, this batch included): the gradient is then exactly
        # 1 / w times the derivative of the running covariances.
        batch = _covariances_about(x, y, weight, self.mean_x, self.mean_y)
        running = self.running_covariances()
        # The running value, with the batch covariances' gradient.
        matrices = tuple(r + (b - b.detach()) for r, b in zip(running, batch))
        (s_xx, s_yy, s_xy), (mean_x, mean_y) = self._project(matrices, (self.mean_x, self.mean_y))
        correlations = _correlations_or_zero(s_xx, s_yy, s_xy, mean_x, mean_y, self.r)
        loss = 1.0 - mean_correlation(correlations, self.top_k).mean()
        local = weight.sum()
        world = _world_size()
        if world == 1:
            return loss * (local >= 2)  # zero, in the graph, for fewer than 2 samples
        # Each process's gradient weighted by its share of the step's samples (DDP averages).
        gradient = (loss - loss.detach()) * (world * local / pooled.clamp(min=1.0))
        return loss.detach() * (local >= 2) + gradient * (pooled >= 2)
