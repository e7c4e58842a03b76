"""Image-only linear probe: how much of the labels an image encoder's own embedding holds.

One-vs-rest logistic regression (one sigmoid per class, the multi-label task's loss) on the
cached image embeddings `e_i` of a feature cache: trained on `train` by full-batch L-BFGS on
standardised features, its L2 strength picked on `val` from a small grid, then F1-macro / F1-micro
at a 0.5 threshold on `test` (the same `MultilabelF1Score` the model is scored with). Nothing of
RLRT's head is involved, so it compares image towers on equal terms.

    python -m rlrt.reports.linear_probe results/demo/cache
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rlrt.cache.reader import SplitCacheReader

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class Probe:
    """A fitted probe: `predict(x) = sigmoid(((x - mean) / std) @ weight + bias) > 0.5`.

    Attributes:
        mean, std: `(D,)` the training features' statistics.
        weight: `(D, C)`; bias: `(C,)`.
        l2: the L2 strength it was fitted with.
    """

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor
    l2: float

    def logits(self, x: Tensor) -> Tensor:
        """`(N, D)` -> `(N, C)`."""
        return ((x.double() - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, x: Tensor) -> Tensor:
        """`(N, D)` -> bool `(N, C)`."""
        return self.logits(x) > 0


def fit_probe(x: Tensor, y: Tensor, l2: float, max_iter: int = 200) -> Probe:
    """Fit one-vs-rest logistic regression: mean binary cross-entropy + `l2 / 2 * |W|^2`.

    Args:
        x: `(N, D)` features; y: `(N, C)` 0/1 targets.
        l2: L2 strength on the weights (not the biases).
        max_iter: L-BFGS iterations (the problem is convex; it converges well before).
    """
    x, y = x.double(), y.double()
    mean = x.mean(0)
    std = x.std(0).clamp(min=1e-6)  # constant features (zero padding, dead units) stay at 0
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias],
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-14,
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, y)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return Probe(mean, std, weight.detach(), bias.detach(), l2)


def f1_scores(predicted: Tensor, target: Tensor) -> dict[str, float]:
    """F1-macro and F1-micro of bool `(N, C)` predictions, as the model is scored."""
    from torchmetrics.classification import MultilabelF1Score

    num = target.shape[1]
    return {
        f"f1_{average}": float(
            MultilabelF1Score(num_labels=num, average=average)(predicted.float(), target.long())
        )
        for average in ("macro", "micro")
    }


def linear_probe(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None = None,
    l2_grid: tuple[float, ...] = L2_GRID,
) -> dict[str, float]:
    """Fit on `train` (`(x (N, D), y (N, C))`), the L2 strength best on `val` by F1-macro (the
    grid's middle without `val`), and score `test`: `{"f1_macro", "f1_micro", "l2"}`."""
    if val is None:
        chosen = l2_grid[len(l2_grid) // 2]
    else:
        scores = {
            l2: f1_scores(fit_probe(*train, l2).predict(val[0]), val[1])["f1_macro"]
            for l2 in l2_grid
        }
        chosen = max(scores, key=scores.get)
    probe = fit_probe(*train, chosen)
    return {**f1_scores(probe.predict(test[0]), test[1]), "l2": chosen}


def cached_split(folder: Path, datamodule, split: str) -> tuple[Tensor, Tensor]:
    """The image embeddings `(N, E_i)` (zeros for a sample without image) and multi-hot labels
    `(N, C)` of one cache split, labels matched to the cache's sample ids by the data module."""
    reader = SplitCacheReader(folder)
    ids = json.loads((folder / "ids.json").read_text())
    rows = np.asarray(reader.sample_image_row)
    embedding = np.asarray(reader.image_embedding, dtype=np.float32)
    x = np.where(rows[:, None] >= 0, embedding[np.maximum(rows, 0)], 0.0)
    labels = {r.id: r.label for r in datamodule.dataset(split).records}
    unknown = [i for i in ids if i not in labels]
    if unknown:
        raise ValueError(
            f"{len(unknown)} samples of {folder} (e.g. {unknown[0]!r}) are not in the data "
            f"module's {split} split: give the data the cache was built from"
        )
    y = torch.zeros(len(ids), datamodule.num_classes)
    for n, sample in enumerate(ids):
        label = labels[sample]
        y[n, label if isinstance(label, list) else [label]] = 1.0
    return torch.from_numpy(x), y


def probe_cache(cache: Path, datamodule=None) -> dict[str, float]:
    """The probe on a feature cache folder (with `train`, `test`, and `val` when built); the
    data module defaults to the one named in the cache's manifest, at its root."""
    cache = Path(cache)
    if not (cache / "train" / "manifest.json").is_file():
        raise FileNotFoundError(f"{cache} holds no built train split: run `rlrt cache` first")
    if datamodule is None:
        manifest = json.loads((cache / "train" / "manifest.json").read_text())
        module, _, name = manifest["dataset"].rpartition(".")
        datamodule = getattr(importlib.import_module(module), name)(root=manifest["root"])
    if datamodule.task != "multilabel":
        raise ValueError(f"the probe scores multi-label tasks; this data is {datamodule.task}")
    splits = {
        s: cached_split(cache / s, datamodule, s)
        for s in ("train", "val", "test")
        if (cache / s / "manifest.json").is_file()
    }
    if "test" not in splits:
        raise FileNotFoundError(f"{cache} holds no built test split: run `rlrt cache` first")
    return linear_probe(splits["train"], splits["test"], splits.get("val"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path, help="feature cache folder (train/, val/, test/)")
    args = parser.parse_args(argv)
    print(json.dumps(probe_cache(args.cache)))


if __name__ == "__main__":
    main()
