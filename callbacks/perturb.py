"""Pure, seeded perturbation functions.

Which sample is perturbed is a function of `(seed, split, sample id)` only, so it does not depend
on batch order, batch size, worker count or device count.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from torch import Tensor

MissingType = Literal["image", "text", "both"]


def sample_uniform(seed: int, split: str, sample_id: str, stream: str = "") -> float:
    """A uniform number in `[0, 1)` fixed by `(seed, split, sample_id, stream)`."""
    key = f"{seed}\x1f{split}\x1f{sample_id}\x1f{stream}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def missing_masks(
    ids: list[str], *, rate: float, missing_type: MissingType, seed: int, split: str
) -> tuple[Tensor, Tensor]:
    """Which samples lose their image and which their text.

    A sample is dropped when its uniform draw is below `rate`. For `both`, a second draw sends a
    dropped sample to lose its image or its text with equal odds (never both), the protocol of the
    missing-aware prompt literature. Counts are binomial, so a split of `n` samples loses about
    `rate * n`, exactly `n` at rate 1 and none at rate 0.

    Returns:
        `drop_image`, `drop_text`: bool `(B,)`.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"missing rate must be in [0, 1], got {rate}")
    drop_image, drop_text = [], []
    for sample_id in ids:
        dropped = sample_uniform(seed, split, sample_id, "drop") < rate
        if missing_type == "both":
            loses_image = sample_uniform(seed, split, sample_id, "which") < 0.5
        else:
            loses_image = missing_type == "image"
        drop_image.append(dropped and loses_image)
        drop_text.append(dropped and not loses_image)
    return torch.tensor(drop_image, dtype=torch.bool), torch.tensor(drop_text, dtype=torch.bool)


def apply_missing(
    batch: dict, *, rate: float, missing_type: MissingType, seed: int, split: str
) -> dict:
    """Clear `image_present` / `text_present` in `batch` (in place) for the dropped samples."""
    if rate == 0:
        return batch
    ids = [str(i) for i in batch["id"]]
    drop_image, drop_text = missing_masks(
        ids, rate=rate, missing_type=missing_type, seed=seed, split=split
    )
    size = len(ids)
    for key, drop in (("image_present", drop_image), ("text_present", drop_text)):
        present = batch.get(key)
        if present is None:
            present = torch.ones(size, dtype=torch.bool)
        batch[key] = present & ~drop.to(present.device)
    return batch
