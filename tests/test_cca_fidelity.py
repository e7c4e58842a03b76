"""Fidelity of `L_CCA` and `cca_corr` (issue 25), each against an independent reference:
out-of-sample scoring and its noise floor, the LayerNorm's constant direction, the running
gradient's relation to the running value, DDP weighting, nothing logged for a degenerate batch."""

import sys

import numpy as np
import pytest
import torch

from rlrt.alignment import FitMoments, Moments, noise_floor, out_of_sample_score
from rlrt.losses import RunningCCALoss, correlations_from_covariances
from rlrt.metrics import HeldOutCorrelation
from rlrt.running_log import RunningCorrelationLog
from tests.cca_reference import in_sample, layer_norm, out_of_sample


def views(n, d=6, seed=0, noise=0.7):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 3))
    mix_x, mix_y = rng.normal(size=(3, d)), rng.normal(size=(3, d))
    return shared @ mix_x + noise * rng.normal(size=(n, d)), shared @ mix_y + rng.normal(
        size=(n, d)
    )


def moments_of(x, y):
    """Moments of `(N, d)` NumPy views, by the package's sums (one layer pair)."""
    fit = FitMoments(num_layers=1, dim=x.shape[1])
    fit.update(torch.tensor(x[None]), torch.tensor(y[None]), torch.ones(len(x)))
    fit.pool()
    return fit.moments()


# ------------------------------------------------------------------ 1. out of sample
@pytest.mark.parametrize("top_k,drop_ones", [(None, False), (2, False), (None, True)])
def test_out_of_sample_score_matches_numpy(top_k, drop_ones):
    rng = np.random.default_rng(3)
    x, y = views(900, seed=1)
    x, y = x + rng.normal(size=6) * 5, y - 2.0  # means that must not matter
    fit, held = slice(0, 600), slice(600, 900)
    a, b = moments_of(x[fit], y[fit]), moments_of(x[held], y[held])
    if drop_ones:
        a, b = a.without_ones(), b.without_ones()
    got = out_of_sample_score(a, b, 1e-3, top_k).item()
    expected = out_of_sample(x[fit], y[fit], x[held], y[held], top_k=top_k, drop_ones=drop_ones)
    assert got == pytest.approx(expected, rel=1e-8)


def test_held_out_correlation_scores_another_splits_directions():
    """The metric accumulates the split batch by batch and scores the fitted directions on it."""
    x, y = views(1000, seed=2)
    metric = HeldOutCorrelation(num_layers=2, dim=6)
    for start in range(600, 1000, 96):  # uneven last batch
        a, b = torch.tensor(x[start : start + 96]), torch.tensor(y[start : start + 96])
        metric.update(torch.stack([a, b]), torch.stack([b, a]))
    fit = FitMoments(num_layers=2, dim=6)
    a, b = torch.tensor(x[:600]), torch.tensor(y[:600])
    fit.update(torch.stack([a, b]), torch.stack([b, a]), torch.ones(600))
    fit.pool()
    got = metric.out_of_sample(fit.moments()).numpy()
    forward = out_of_sample(x[:600], y[:600], x[600:], y[600:])
    backward = out_of_sample(y[:600], x[:600], y[600:], x[600:])
    np.testing.assert_allclose(got, [forward, backward], rtol=1e-8)


def test_noise_scores_high_in_sample_and_about_zero_out_of_sample_at_the_demo_sizes():
    """The demo's test split: 300 samples, d_c = 32 (31 directions without the constant one),
    about 1,050 training samples to fit on. Independent noise scores ~0.28 solved on the split
    itself, about 0 out of sample, under the floor the same shapes give."""
    rng = np.random.default_rng(0)
    d = 32
    train_x, train_y = rng.normal(size=(1050, d)), rng.normal(size=(1050, d))
    test_x, test_y = rng.normal(size=(300, d)), rng.normal(size=(300, d))
    metric = HeldOutCorrelation(num_layers=1, dim=d, drop_constant=True)
    metric.update(torch.tensor(test_x[None]), torch.tensor(test_y[None]))
    in_split = metric.compute().item()
    assert in_split == pytest.approx(in_sample(test_x, test_y, drop_ones=True), rel=1e-8)
    assert in_split > 0.2  # what the old `cca_corr` reported for pure noise
    fit = moments_of(train_x, train_y)
    held_out = metric.out_of_sample(fit).item()
    floor = noise_floor(1050, 300, d - 1, 1e-3)
    assert held_out == pytest.approx(
        out_of_sample(train_x, train_y, test_x, test_y, drop_ones=True), rel=1e-8
    )
    assert abs(held_out) < floor < 0.05


def slow_noise_scores(n_fit, n_held, d, draws, seed):
    """Out-of-sample scores of independent Gaussian views, sample by sample (NumPy)."""
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        fx, fy = rng.normal(size=(n_fit, d)), rng.normal(size=(n_fit, d))
        hx, hy = rng.normal(size=(n_held, d)), rng.normal(size=(n_held, d))
        scores.append(out_of_sample(fx, fy, hx, hy))
    return np.array(scores)


# Wishart draws, sample draws, the Gaussian approximation (wider than SIMULATED_MAX_DIM)
@pytest.mark.parametrize("n_fit,n_held,d", [(400, 60, 4), (40, 12, 8), (650, 120, 65)])
def test_noise_floor_is_the_quantile_a_slow_simulation_finds(n_fit, n_held, d):
    slow = slow_noise_scores(n_fit, n_held, d, draws=600, seed=1)
    spread = slow.std()
    floor = noise_floor(n_fit, n_held, d, 1e-3)
    # Monte Carlo error of two 95th percentiles (100 and 600 draws): about 0.25 of a std
    assert floor == pytest.approx(np.quantile(slow, 0.95), abs=0.75 * spread)
    assert abs(np.median(slow)) < 0.2 * spread  # the null is centred on 0
    assert noise_floor(n_fit, n_held, d, 1e-3) == floor  # seeded: the same shapes, the same floor
    assert np.isnan(noise_floor(n_fit, d, d, 1e-3))  # nothing can be scored on d samples


# ------------------------------------------------------------------ 2. the constant direction
def layer_normed_pair(n=2000, d=8, seed=0):
    """Two LayerNorm outputs of the same normalised features, with different gains and biases:
    every direction but the constant one perfectly aligned."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d)
    x = layer_norm(z, rng.uniform(0.5, 2.0, d), rng.normal(size=d))
    y = layer_norm(z, rng.uniform(0.5, 2.0, d), rng.normal(size=d))
    return x, y


def test_a_layer_norm_leaves_one_correlation_at_zero_and_dropping_it_reaches_one():
    x, y = layer_normed_pair()
    d = x.shape[1]
    kept = HeldOutCorrelation(num_layers=1, dim=d)
    dropped = HeldOutCorrelation(num_layers=1, dim=d, drop_constant=True)
    for metric in (kept, dropped):
        metric.update(torch.tensor(x[None]), torch.tensor(y[None]))
    # with the constant direction, the ceiling: (d - 1) / d
    assert kept.compute().item() == pytest.approx(in_sample(x, y), rel=1e-6)
    assert (d - 1) / d - 5e-3 < kept.compute().item() <= (d - 1) / d  # (the ridge costs a little)
    assert dropped.compute().item() == pytest.approx(in_sample(x, y, drop_ones=True), rel=1e-8)
    assert dropped.compute().item() > 0.99
    # the ceiling was the lost direction: the rest is the same mean over d - 1
    assert dropped.compute().item() == pytest.approx(kept.compute().item() * d / (d - 1), abs=1e-3)
    half = slice(0, 1000), slice(1000, 2000)
    fit = moments_of(x[half[0]], y[half[0]])
    held = HeldOutCorrelation(num_layers=1, dim=d, drop_constant=True)
    held.update(torch.tensor(x[None, half[1]]), torch.tensor(y[None, half[1]]))
    assert held.out_of_sample(fit).item() > 0.999  # perfect alignment carries over


def test_the_loss_drops_the_constant_direction_too():
    x, y = layer_normed_pair(n=512)
    a, b = torch.tensor(x[None]), torch.tensor(y[None])
    kept = RunningCCALoss(num_layers=1, dim=8, window=512, warmup_samples=0)(a, b).item()
    dropped = RunningCCALoss(num_layers=1, dim=8, window=512, warmup_samples=0, drop_constant=True)
    assert kept == pytest.approx(1 - in_sample(x, y), rel=1e-6)  # about 1 / d
    assert dropped(a, b).item() == pytest.approx(1 - in_sample(x, y, drop_ones=True), abs=1e-10)
    assert dropped.eval()(a, b).item() == pytest.approx(dropped.train()(a, b).item(), abs=1e-3)
    with pytest.raises(ValueError, match=r"cca_top_k must be in \[1, 7\]"):
        RunningCCALoss(num_layers=1, dim=8, top_k=8, drop_constant=True)


def test_molt_outputs_have_one_constant_direction_and_the_model_removes_it(
    image_encoder, text_encoder
):
    from tests.test_system import latents, make_batch, make_model

    model = make_model(image_encoder, text_encoder).eval()
    with torch.no_grad():  # gains away from 1: the constant direction is then not the ones
        for molt in model.molt:
            molt.image_norm.weight.uniform_(0.5, 2.0)
    h_i, _ = latents(model, [make_batch(seed=i) for i in range(6)])
    sample = h_i[0].double().numpy()
    values = np.linalg.eigvalsh(np.cov(sample.T))
    assert values[0] < 1e-9 * values[-1] and values[1] > 1e-6 * values[-1]
    assert model.cca.drop_constant and model.val_alignment.drop_constant  # the default


# ------------------------------------------------------------------ 3. the running gradient
def numpy_running_value(state, x, y, window, r=1e-3):
    """`1 - mean correlation` of the running moments after folding the batch `(B, d)` into
    `state` (the module's buffers, NumPy), as docs/design.md writes the update."""
    b = len(x)
    seen = state["seen"]
    w = min(max(b / window, b / (seen + b)), 1.0)
    mx = (1 - w) * state["mean_x"] + w * x.mean(0)
    my = (1 - w) * state["mean_y"] + w * y.mean(0)
    sxx = (1 - w) * state["second_xx"] + w * x.T @ x / b - np.outer(mx, mx)
    syy = (1 - w) * state["second_yy"] + w * y.T @ y / b - np.outer(my, my)
    sxy = (1 - w) * state["second_xy"] + w * x.T @ y / b - np.outer(mx, my)
    s = [torch.tensor(m) for m in (sxx, syy, sxy)]
    return 1.0 - correlations_from_covariances(*s, r).mean().item(), w


def test_the_running_gradient_is_the_running_values_derivative_over_w():
    """Central finite differences of the running value (NumPy update) times `1 / w`."""
    x, y = views(512, d=4, seed=5)
    window = 256
    loss = RunningCCALoss(num_layers=1, dim=4, window=window, warmup_samples=0)
    for start in range(0, 448, 64):
        loss(torch.tensor(x[None, start : start + 64]), torch.tensor(y[None, start : start + 64]))
    state = {k: v[0].numpy().copy() if v.ndim else v.item() for k, v in loss.state_dict().items()}
    bx, by = x[448:], y[448:]
    a = torch.tensor(bx[None], requires_grad=True)
    (got,) = torch.autograd.grad(loss(a, torch.tensor(by[None])), a)
    _, w = numpy_running_value(state, bx, by, window)
    step = 1e-6
    for i, j in [(0, 0), (5, 1), (17, 2), (40, 3), (63, 0), (30, 2)]:
        up, down = bx.copy(), bx.copy()
        up[i, j] += step
        down[i, j] -= step
        numeric = (
            numpy_running_value(state, up, by, window)[0]
            - numpy_running_value(state, down, by, window)[0]
        ) / (2 * step)
        assert got[0, i, j].item() == pytest.approx(numeric / w, rel=1e-5, abs=1e-9)


# ------------------------------------------------------------------ 4. DDP weighting
def _weighted_rank(rank: int, port: int, folder: str) -> None:
    """One process of `test_ddp_gradient_is_the_pooled_gradient`: a DDP-wrapped linear map of
    one view, the loss on a step where this process has 4 (rank 0) or 14 (rank 1) pairs."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        linear, loss = _weighting_setup()
        ddp = DistributedDataParallel(linear)
        for step in range(4):
            x, y, present = _weighting_batch(step)
            part = slice(16 * rank, 16 * rank + 16)
            if step < 3:  # fill the statistics
                with torch.no_grad():
                    loss(ddp.module(x[:, part]), y[:, part], present[part])
                continue
            loss(ddp(x[:, part]), y[:, part], present[part]).backward()
        torch.save(linear.weight.grad, f"{folder}/grad{rank}.pt")
    finally:
        dist.destroy_process_group()


def _weighting_setup():
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 4, bias=False).double()
    loss = RunningCCALoss(num_layers=1, dim=4, window=64, warmup_samples=0)
    return linear, loss


def _weighting_batch(step: int):
    """`(1, 32, 4)` views and `(32,)` flags: rows 0-15 are rank 0's, with 4 pairs on the last
    step; rows 16-31 rank 1's, with 14."""
    generator = torch.Generator().manual_seed(step)
    shared = torch.randn(1, 32, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 1, 32, 4, generator=generator, dtype=torch.float64)
    present = torch.ones(32, dtype=torch.bool)
    if step == 3:
        present[4:16] = False
        present[30:] = False
    return shared + noise[0], shared + 0.5 * noise[1], present


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_ddp_gradient_is_the_pooled_gradient(tmp_path):
    """DDP averages the processes' gradients; weighted by their pairs, the average is the
    gradient one process computes on the whole step's batch."""
    import torch.multiprocessing as mp

    from tests.test_ddp import free_port

    mp.start_processes(
        _weighted_rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    grads = [torch.load(tmp_path / f"grad{r}.pt", weights_only=True) for r in (0, 1)]
    torch.testing.assert_close(grads[0], grads[1])  # DDP gave both the average
    linear, loss = _weighting_setup()
    for step in range(4):
        x, y, present = _weighting_batch(step)
        value = loss(linear(x), y, present)
    value.backward()
    torch.testing.assert_close(grads[0], linear.weight.grad, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ 5. degenerate batches
def test_a_batch_of_fewer_than_two_pairs_logs_no_running_correlation(image_encoder, text_encoder):
    from tests.test_system import make_batch, make_model

    model = make_model(image_encoder, text_encoder, beta=0.5, dropout=0.0).train()
    model.cca.warmup_samples = 0
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)
    model.log_dict = lambda *a, **kw: None
    model._shared_step(make_batch(seed=0), "train")  # all six pairs: logged
    assert set(logged) >= {"train/cca_corr_running_step"}
    first = logged.pop("train/cca_corr_running_step").item()
    one = make_batch(seed=1)
    one["text_present"][1:] = False  # one complete pair
    model._shared_step(one, "train")
    assert not any(name.startswith("train/cca_corr_running") for name in logged)
    # the epoch mean counts the batch with pairs only (not a 1.0 for the other)
    assert model._running_log.compute_and_reset() == pytest.approx(first)


def test_the_epoch_mean_weights_the_counted_batches_by_size():
    log = RunningCorrelationLog()
    values, pairs, sizes = [0.5, 1.0, 0.8, 0.2], [10, 1, 0, 7], [16, 16, 8, 12]
    for v, p, s in zip(values, pairs, sizes):
        log.update(torch.tensor(v), torch.tensor(p), s)
    kept = [(v, s) for v, p, s in zip(values, pairs, sizes) if p >= 2]
    assert log.compute_and_reset() == pytest.approx(
        sum(v * s for v, s in kept) / sum(s for _, s in kept)
    )
    assert log.compute_and_reset() is None  # nothing since the reset
    log.update(torch.tensor(1.0), torch.tensor(1), 4)
    assert log.compute_and_reset() is None  # only degenerate batches: no value at all


def test_moments_from_sums_are_the_centred_covariances():
    x, y = views(50, d=3, seed=9)
    m = moments_of(x, y)
    assert isinstance(m, Moments) and m.count.item() == 50
    np.testing.assert_allclose(m.s_xy[0].numpy(), np.cov(x.T, y.T, bias=True)[:3, 3:], rtol=1e-10)
