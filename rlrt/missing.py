"""The missing-modality path: the presence flags of a batch and what replaces a missing modality.

Every batch carries `image_present` / `text_present` (bool `(B,)`): both collates set them and
the perturbation callbacks clear them. A missing modality is replaced according to the strategy:

- `dummy`: the dummy input of the missing-aware prompt literature, an all-ones image after
  normalisation or the empty text. Online, the encoders are given the dummy inputs (the image
  encoder swaps the pixels in itself: an all-ones normalised image is no uint8 image); from the
  feature cache, the cached dummy inputs' features take the missing rows.
- `zero`: that modality's tokens and embedding are zeroed (masks are kept).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from rlrt.features import Features

Strategy = Literal["dummy", "zero"]
STRATEGIES = ("dummy", "zero")
FLAGS = ("image_present", "text_present")


class MissingFlagsError(KeyError):
    """A batch without its presence flags: a collate (or a hand-built batch) forgot them."""

    def __str__(self) -> str:  # KeyError's own would print the message quoted
        return str(self.args[0])


def check_strategy(strategy: Any) -> Strategy:
    """`strategy` if it is `dummy` or `zero`; one clear ValueError otherwise."""
    if strategy not in STRATEGIES:
        raise ValueError(f"missing_strategy must be 'dummy' or 'zero', got {strategy!r}")
    return strategy


def present_flags(
    batch: dict[str, Any], device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """`image_present`, `text_present` of `batch`: bool `(B,)`, on `device` when given.

    The one place a batch's flags are read: a batch without them is a programming error (every
    collate sets them), reported here rather than defaulted to "all present".
    """
    absent = [key for key in FLAGS if key not in batch]
    if absent:
        raise MissingFlagsError(
            f"the batch has no {' / '.join(absent)} (it holds {sorted(batch)}); every collate "
            "sets the presence flags, so set them (bool (B,)) where this batch is built"
        )
    image, text = batch["image_present"], batch["text_present"]
    if device is not None:
        image, text = image.to(device), text.to(device)
    return image, text


def substitute_missing(
    features: Features,
    image_present: Tensor,
    text_present: Tensor,
    strategy: Strategy,
    dummy: Features | None = None,
) -> Features:
    """Replace the absent modalities of `features` (a pure function; numerics as before).

    Args:
        features: the batch's features, `B` samples.
        image_present, text_present: bool `(B,)`.
        strategy: `zero` zeroes an absent modality's tokens and embedding; `dummy` puts the dummy
            inputs' features in its place.
        dummy: under `dummy`, the dummy inputs' `Features` of batch size 1, broadcast over the
            batch (the feature cache's `dummy` split); None when the encoders were already given
            the dummy inputs (online encoding), so that `features` hold them where absent.

    Returns:
        `Features` of `B` samples.
    """
    check_strategy(strategy)
    device = features.image_embedding.device
    image_absent, text_absent = ~image_present.to(device), ~text_present.to(device)
    if strategy == "zero":
        return features.zero_modality("image", image_absent).zero_modality("text", text_absent)
    if dummy is None:
        return features
    return features.substitute(image_absent, text_absent, dummy)


def encoder_inputs(
    texts: list[str], image_present: Tensor, text_present: Tensor, strategy: Strategy
) -> tuple[list[str], Tensor | None]:
    """What the online encoders are given: the texts (`B`) and the image encoder's `present` flags.

    Under `dummy` an absent text becomes the empty text and the image flags go to the image
    encoder, which swaps in the all-ones normalised image; under `zero` the inputs are left as
    they are (None: no swap) and `substitute_missing` zeroes their features after encoding.
    """
    if check_strategy(strategy) != "dummy":
        return list(texts), None
    return [t if ok else "" for t, ok in zip(texts, text_present.tolist())], image_present
