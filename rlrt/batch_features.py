"""A batch's `Features`: encoded now or read from the feature cache, the missing modalities
replaced by the strategy in effect (`rlrt.missing`), cached rows checked finite once."""

from __future__ import annotations

from typing import Any

from torch import nn

from rlrt.features import Features
from rlrt.missing import Strategy, encoder_inputs, present_flags, substitute_missing


def encode_batch(
    image_encoder: nn.Module, text_encoder: nn.Module, batch: dict[str, Any], strategy: Strategy
) -> Features:
    """Run the frozen encoders on a batch dict (`image` uint8 `(B, 3, S, S)`, `text` `B` str),
    the missing modalities replaced by `strategy`: `B` samples' `Features`."""
    image_present, text_present = present_flags(batch, batch["image"].device)
    texts, image_swap = encoder_inputs(batch["text"], image_present, text_present, strategy)
    image_tokens, image_mask, image_embedding = image_encoder(batch["image"], image_swap)
    text_tokens, text_mask, text_embedding = text_encoder(texts)
    features = Features(
        image_tokens, image_mask, image_embedding, text_tokens, text_mask, text_embedding
    )
    # the encoders saw the dummy inputs (`dummy`): only `zero` has features left to replace
    return substitute_missing(features, image_present, text_present, strategy)


def cached_features(batch: dict[str, Any], strategy: Strategy) -> Features:
    """A cached batch's `features` (`B` samples, stored for the real inputs), the absent
    modalities given the cached dummy inputs' features (`dummy`, from `dummy_features`) or zeros
    (`zero`), as online encoding would."""
    image_present, text_present = present_flags(batch)
    return substitute_missing(
        batch["features"], image_present, text_present, strategy, batch["dummy_features"]
    )


class FiniteCheck:
    """Stop at a cached sample with NaN or infinite features, naming it, rather than train on it.

    The cache is checked when opened on a sample of rows (`rlrt cache --verify` checks all); here
    each sample is checked the first time a stage meets it, so after the first epoch the step no
    longer waits for the device to answer."""

    def __init__(self) -> None:
        # per stage and cache, the samples whose features were found finite
        self._checked: dict[str, set[str]] = {}

    def __call__(self, features: Features, ids: list[str], trainer: Any) -> None:
        """features: `B` samples of `ids`; trainer: the module's trainer, or None."""
        where = ""  # the stage and the cache folder: the same ids may come from another cache
        if trainer is not None:
            cache = getattr(trainer.datamodule, "feature_cache", None)
            where = f"{trainer.state.stage}:{cache}"
        checked = self._checked.setdefault(where, set())
        if all(sample_id in checked for sample_id in ids):
            return
        bad = features.non_finite_samples()
        if bool(bad.any()):
            found = [ids[i] for i in bad.nonzero().flatten().tolist()[:3]]
            raise ValueError(
                f"the feature cache holds NaN or infinite features for sample(s) {found}; check "
                "it with `rlrt cache ... --verify` and rebuild it with --overwrite"
            )
        checked.update(ids)
