"""The bookkeeping around the alignment of `h_i` and `h_t`: the parts a model keeps for it and what
an evaluation epoch reports.

- Training: `L_CCA` on running covariances (`RunningCCALoss`, only with `beta != 0`) and the
  training features `cca_corr` fits its directions on (`FitMoments`).
- Validation and test: `cca_corr`, out of sample (`HeldOutCorrelation.out_of_sample`), per
  layer pair and averaged, with the noise floor of its sizes (`rlrt.alignment.noise_floor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor, nn

from rlrt.alignment import FitMoments, noise_floor
from rlrt.losses import RunningCCALoss
from rlrt.metrics import HeldOutCorrelation


class CCAParts(NamedTuple):
    """The modules a model keeps for the alignment (`cca` None with `beta = 0`, all None
    without MoLT: nothing to align)."""

    cca: RunningCCALoss | None
    val_alignment: HeldOutCorrelation | None
    test_alignment: HeldOutCorrelation | None
    fit_moments: FitMoments | None


def build_cca_parts(molt: nn.ModuleList | None, hparams: Mapping[str, Any]) -> CCAParts:
    """The training loss (with `beta != 0`), the held-out correlation of each split (measured
    whether or not the loss is on: `no_cca` is compared on it) and the training features' sums,
    for the layer pairs of `molt` (one MoLT each, width `common_dim`), from RLRT's `hparams`
    (`beta`, `common_dim`, `cca_window`, `cca_reg`, `cca_top_k`, `cca_drop_constant`); all None
    for a model without MoLT (`molt` None)."""
    if molt is None:
        return CCAParts(None, None, None, None)
    num_layers = len(molt)
    dim, r, top_k = hparams["common_dim"], hparams["cca_reg"], hparams["cca_top_k"]
    drop_constant = hparams["cca_drop_constant"]
    cca = None
    if hparams["beta"] != 0:
        cca = RunningCCALoss(
            num_layers=num_layers,
            dim=dim,
            window=hparams["cca_window"],
            r=r,
            top_k=top_k,
            drop_constant=drop_constant,
        )
    alignment = HeldOutCorrelation(
        num_layers=num_layers, dim=dim, r=r, top_k=top_k, drop_constant=drop_constant
    )
    fit_moments = FitMoments(num_layers=num_layers, dim=dim)
    return CCAParts(cca, alignment.clone(), alignment.clone(), fit_moments)


class NoiseFloors:
    """`rlrt.alignment.noise_floor`, computed once per set of arguments (every validation epoch
    has the same sizes, mostly)."""

    def __init__(self) -> None:
        self._floors: dict[tuple, float] = {}

    def __call__(self, count: int, held_out: int, dim: int, r: float, top_k: int | None) -> float:
        key = (count, held_out, dim, r, top_k)
        if key not in self._floors:
            self._floors[key] = noise_floor(*key)
        return self._floors[key]


def alignment_metrics(
    stage: str,
    alignment: HeldOutCorrelation,
    fit_moments: FitMoments,
    floors: NoiseFloors,
    *,
    fitting: bool,
) -> dict[str, Tensor | float]:
    """`{stage}/cca_corr` (mean over layer pairs), `{stage}/cca_corr_noise_floor` and
    `{stage}/cca_corr_layer{l}`, in that order: the directions fitted on the training features
    (`fit_moments`), scored on the split `alignment` holds, which then starts over. NaN without
    training features (a checkpoint from before they were kept) or with too few samples.

    `fitting`: the training features are pooled over the processes first (a collective: every
    process must get here); otherwise this process's are used as they are (a loaded checkpoint's).
    """
    if fitting:
        fit_moments.pool()
    fit = fit_moments.moments(include_local=not fitting)
    per_layer = alignment.out_of_sample(fit).float().reshape(-1)  # (L_s,)
    with alignment.sync_context(should_sync=True, should_unsync=True):
        n_held_out = int(alignment.count.item())
    alignment.reset()
    floor = floors(int(fit.count.item()), n_held_out, alignment.width, alignment.r, alignment.top_k)
    logged: dict[str, Tensor | float] = {
        f"{stage}/cca_corr": per_layer.mean(),
        f"{stage}/cca_corr_noise_floor": floor,
    }
    for layer, value in enumerate(per_layer):
        logged[f"{stage}/cca_corr_layer{layer}"] = value
    return logged
