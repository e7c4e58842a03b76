"""`ModalityNoise`: test-time noise on the image or the text, as a Lightning callback."""

from __future__ import annotations

from typing import Any

from lightning import Callback

from callbacks.perturb import apply_noise, check_noise_level


class ModalityNoise(Callback):
    """Noise a seeded half of the evaluation samples before each forward pass (docs/datasets.md).

    Image: Gaussian noise of standard deviation `10 * image_level` on the 0-255 pixel scale,
    clamped. Text: each word replaced by `_` with probability `0.1 * text_level`. Levels run from
    0 (clean) to 10. Applied in validation, test and predict, never while training. Which samples
    are noised, and the noise itself, are fixed by `(seed, split, sample id)`.

    Needs raw inputs: with a feature cache the batch holds clean features and this raises.

    Args:
        image_level: image noise level in [0, 10]: Gaussian noise of sd `10 * level` on the 0-255
            pixels.
        text_level: text noise level in [0, 10]: each word masked with probability `0.1 * level`.
        seed: the protocol seed.
        fraction: share of the samples that get noise (the protocol's "random half": 0.5).
    """

    def __init__(
        self,
        *,
        image_level: float = 0.0,
        text_level: float = 0.0,
        seed: int = 0,
        fraction: float = 0.5,
    ) -> None:
        super().__init__()
        check_noise_level(image_level)
        check_noise_level(text_level)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"noise fraction must be in [0, 1], got {fraction}")
        self.image_level = image_level
        self.text_level = text_level
        self.seed = seed
        self.fraction = fraction

    def protocol(self, pl_module: Any = None) -> dict[str, Any]:
        """The settings, for recording beside results (`pl_module` unused: same signature as
        `MissingModality.protocol`)."""
        return {
            "noise_image_level": self.image_level,
            "noise_text_level": self.text_level,
            "noise_fraction": self.fraction,
            "noise_seed": self.seed,
        }

    def _apply(self, batch: dict, split: str) -> None:
        for modality, level in (("image", self.image_level), ("text", self.text_level)):
            apply_noise(
                batch,
                modality=modality,
                level=level,
                seed=self.seed,
                split=split,
                fraction=self.fraction,
            )

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "val")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "test")

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._apply(batch, "predict")
