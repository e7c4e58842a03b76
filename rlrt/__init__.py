"""rlrt: Robust Latent Representation Tuning for image-text classification (Sun & Song, 2024)."""

__version__ = "0.2.0"
