"""`MissingModality`: the missing-modality protocol as a Lightning callback."""

from __future__ import annotations

from typing import Any

from lightning import Callback

from callbacks.perturb import MissingType, apply_missing
from rlrt.missing import STRATEGIES, Strategy


class MissingModality(Callback):
    """Drop a modality from a seeded fraction of the samples, before each forward pass.

    Train-time and evaluation-time settings are separate (the protocol has both). The batch's
    `image_present` / `text_present` flags are cleared; the model substitutes the missing input.
    The substitution (`strategy`) is part of the protocol: when set, it is put in effect on the
    model (`RLRT.use_missing_strategy`) from the start of each stage (fit, validate, test,
    predict) to its end, and the model's own strategy is restored after (also when the stage
    fails).

    Args:
        train_rate: share of the training samples that lose a modality while fitting.
        train_type: what they lose while fitting: `image`, `text` or `both` (half the image,
            half the text).
        eval_rate: share of the samples that lose a modality in validation, test and predict.
        eval_type: what they lose there (`image`, `text` or `both`).
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
        strategy: Strategy | None = None,
    ) -> None:
        super().__init__()
        for rate in (train_rate, eval_rate):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"missing rates must be in [0, 1], got {rate}")
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(f"strategy must be 'dummy', 'zero' or None, got {strategy!r}")
        self.train_rate = train_rate
        self.train_type = train_type
        self.eval_rate = eval_rate
        self.eval_type = eval_type
        self.seed = seed
        self.strategy = strategy
        self._restore: str | None = None  # the model's own strategy, while ours is in effect

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

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.strategy is None:
            return
        if not callable(getattr(pl_module, "use_missing_strategy", None)):
            raise TypeError(
                f"MissingModality(strategy={self.strategy!r}) needs a model with "
                f"`use_missing_strategy` (RLRT), not {type(pl_module).__name__}; leave strategy "
                "unset for this model"
            )
        previous = pl_module.use_missing_strategy(self.strategy)
        if self._restore is None:  # a stage set up inside another keeps the outer one's
            self._restore = previous

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_strategy(pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_strategy(pl_module)  # Lightning skips `teardown` when a stage fails

    def _restore_strategy(self, pl_module) -> None:
        if self._restore is not None:
            pl_module.use_missing_strategy(self._restore)
            self._restore = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._apply(batch, "train", train=True)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "val", train=False)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "test", train=False)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "predict", train=False)
