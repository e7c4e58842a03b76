"""Pure, seeded perturbation functions: missing modalities, modality dropout, test-time noise.

Which sample is perturbed, and how, is a function of `(seed, split, sample id)` (and the setting)
only, so it does not depend on batch order, batch size, worker count or device count. Modality
dropout, a training regulariser rather than a protocol, draws from torch's global RNG instead.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Literal

import torch
from torch import Tensor

from rlrt.missing import present_flags

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
    image_present, text_present = present_flags(batch)
    ids = [str(i) for i in batch["id"]]
    drop_image, drop_text = missing_masks(
        ids, rate=rate, missing_type=missing_type, seed=seed, split=split
    )
    batch["image_present"] = image_present & ~drop_image.to(image_present.device)
    batch["text_present"] = text_present & ~drop_text.to(text_present.device)
    return batch


def drop_modalities(
    image_present: Tensor, text_present: Tensor, rate: float
) -> tuple[Tensor, Tensor]:
    """Training-time modality dropout: the flags with one modality cleared for a random `rate`
    of the samples that have both (image or text, equal odds, never both).

    Unlike `missing_masks`, the draws come from torch's global RNG on the CPU (so that
    `seed_everything` fixes them) and differ at every step: a regulariser, not a protocol.

    Args:
        image_present, text_present: bool `(B,)`, left as they are.
        rate: probability in `[0, 1]`.

    Returns:
        new `image_present`, `text_present`: bool `(B,)` on the flags' device.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"modality dropout rate must be in [0, 1], got {rate}")
    size = image_present.shape[0]
    image, text = image_present.cpu(), text_present.cpu()
    dropped = (torch.rand(size) < rate) & image & text  # (B,)
    loses_image = torch.rand(size) < 0.5  # (B,)
    return (
        (image & ~(dropped & loses_image)).to(image_present.device),
        (text & ~(dropped & ~loses_image)).to(text_present.device),
    )


# ---------------------------------------------------------------------------------------- noise

NoiseModality = Literal["image", "text"]
MAX_NOISE_LEVEL = 10
IMAGE_NOISE_STD_PER_LEVEL = 10.0  # on the 0-255 pixel scale
WORD_MASK_PROB_PER_LEVEL = 0.1
MASK_TOKEN = "_"
_WHITESPACE = re.compile(r"(\s+)")


def sample_seed(seed: int, split: str, sample_id: str, stream: str) -> int:
    """A 63-bit integer seed fixed by `(seed, split, sample_id, stream)`."""
    key = f"{seed}\x1f{split}\x1f{sample_id}\x1f{stream}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1


def check_noise_level(level: float) -> None:
    if not 0 <= level <= MAX_NOISE_LEVEL:
        raise ValueError(f"noise level must be in [0, {MAX_NOISE_LEVEL}], got {level}")


def noise_selection(
    ids: list[str], *, modality: NoiseModality, seed: int, split: str, fraction: float = 0.5
) -> Tensor:
    """Which samples get noise on `modality`: a seeded `fraction` of them (by id), bool `(B,)`.

    The choice does not depend on the level, so every level noises the same samples.
    """
    if modality not in ("image", "text"):
        raise ValueError(f"noise modality must be 'image' or 'text', got {modality!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"noise fraction must be in [0, 1], got {fraction}")
    chosen = [sample_uniform(seed, split, i, f"noise-{modality}") < fraction for i in ids]
    return torch.tensor(chosen, dtype=torch.bool)


def noisy_image(image: Tensor, *, level: float, seed: int, split: str, sample_id: str) -> Tensor:
    """Gaussian noise of standard deviation `10 * level` on the 0-255 scale, rounded, clamped.

    The standard normal draws are fixed by `(seed, split, sample_id)` and scaled by the level
    (common random numbers): higher levels add more of the same noise.

    Args:
        image: uint8 `(3, H, W)` on any device.

    Returns:
        uint8 `(3, H, W)` on the same device.
    """
    check_noise_level(level)
    if image.dtype != torch.uint8:
        raise TypeError(f"image noise works on uint8 pixels, got {image.dtype}")
    if level == 0:
        return image
    generator = torch.Generator().manual_seed(sample_seed(seed, split, sample_id, "image-noise"))
    normal = torch.randn(image.shape, generator=generator)  # (3, H, W), on the CPU
    std = IMAGE_NOISE_STD_PER_LEVEL * level
    noisy = (image.cpu().to(torch.float32) + std * normal).round().clamp(0, 255)
    return noisy.to(torch.uint8).to(image.device)


def masked_text(text: str, *, level: float, seed: int, split: str, sample_id: str) -> str:
    """Each word replaced by `_` with probability `0.1 * level`; whitespace kept as it was.

    One uniform draw per word, fixed by `(seed, split, sample_id)` and the word's position, is
    compared with the probability: a word masked at one level stays masked at every higher one.
    """
    check_noise_level(level)
    probability = WORD_MASK_PROB_PER_LEVEL * level
    if probability == 0:
        return text
    rng = random.Random(sample_seed(seed, split, sample_id, "text-noise"))
    pieces = _WHITESPACE.split(text)  # words at even positions, separators at odd ones
    for index in range(0, len(pieces), 2):
        draw = rng.random()  # drawn for every word, so positions keep their draws
        if pieces[index] and draw < probability:
            pieces[index] = MASK_TOKEN
    return "".join(pieces)


def apply_noise(
    batch: dict,
    *,
    modality: NoiseModality,
    level: float,
    seed: int,
    split: str,
    fraction: float = 0.5,
) -> dict:
    """Noise `batch["image"]` or `batch["text"]` (in place) on a seeded `fraction` of the samples.

    Raises `ValueError` on a batch without raw inputs (features from a feature cache): clean
    features cannot be noised after the fact.
    """
    check_noise_level(level)
    if level == 0:
        return batch
    if modality not in batch:
        raise ValueError(
            f"{modality} noise needs the raw {modality} in the batch, but it holds "
            f"{sorted(batch)}; evaluate noise without a feature cache"
        )
    ids = [str(i) for i in batch["id"]]
    chosen = noise_selection(ids, modality=modality, seed=seed, split=split, fraction=fraction)
    if modality == "image":
        images = batch["image"].clone()  # (B, 3, H, W) uint8
        for row in torch.nonzero(chosen).flatten().tolist():
            images[row] = noisy_image(
                images[row], level=level, seed=seed, split=split, sample_id=ids[row]
            )
        batch["image"] = images
    else:
        batch["text"] = [
            masked_text(t, level=level, seed=seed, split=split, sample_id=i) if c else t
            for t, i, c in zip(batch["text"], ids, chosen.tolist())
        ]
    return batch
