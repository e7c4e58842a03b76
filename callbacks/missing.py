"""`MissingModality`: the missing-modality protocol as a Lightning callback."""

from __future__ import annotations

from typing import Any, Literal

from lightning import Callback

from callbacks.perturb import MissingType, apply_missing


class MissingModality(Callback):
    """Drop a modality from a seeded fraction of the samples, before each forward pass.

    Train-time and evaluation-time settings are separate (the protocol has both). The batch's
    `image_present` / `text_present` flags are cleared; the model substitutes the missing input.
    The substitution (`strategy`) is part of the protocol: when set, it is written into the batch
    as `batch["missing_strategy"]`, which `RLRT` reads in place of its own `missing_strategy`.

    Args:
        train_rate, train_type: missing rate and type while fitting.
        eval_rate, eval_type: missing rate and type in validation, test and predict.
        seed: the protocol seed (with the split name and the sample id it fixes every choice).
        strategy: what replaces a missing modality: `dummy` (all-ones image, empty text) or
            `zero` (zeroed features); None leaves the model's `missing_strategy`.
    """

    def __init__(
        self,
        *,
        train_rate: float = 0.0,
        train_type: MissingType = "both",
        eval_rate: float = 0.0,
        eval_type: MissingType = "both",
        seed: int = 0,
        strategy: Literal["dummy", "zero"] | None = None,
    ) -> None:
        super().__init__()
        for rate in (train_rate, eval_rate):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"missing rates must be in [0, 1], got {rate}")
        if strategy not in (None, "dummy", "zero"):
            raise ValueError(f"strategy must be 'dummy', 'zero' or None, got {strategy!r}")
        self.train_rate = train_rate
        self.train_type = train_type
        self.eval_rate = eval_rate
        self.eval_type = eval_type
        self.seed = seed
        self.strategy = strategy

    def protocol(self, pl_module: Any = None) -> dict[str, Any]:
        """The settings, for recording beside results (the strategy resolved against the model's
        `missing_strategy` when `pl_module` is given)."""
        strategy = self.strategy or getattr(pl_module, "missing_strategy", None)
        return {
            "missing_strategy": strategy,
            "missing_train_rate": self.train_rate,
            "missing_train_type": self.train_type,
            "missing_eval_rate": self.eval_rate,
            "missing_eval_type": self.eval_type,
            "missing_seed": self.seed,
        }

    def _apply(self, batch: dict, split: str, train: bool) -> None:
        rate, kind = (
            (self.train_rate, self.train_type) if train else (self.eval_rate, self.eval_type)
        )
        apply_missing(batch, rate=rate, missing_type=kind, seed=self.seed, split=split)
        if self.strategy is not None:
            batch["missing_strategy"] = self.strategy

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._apply(batch, "train", train=True)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "val", train=False)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "test", train=False)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "predict", train=False)
