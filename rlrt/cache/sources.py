"""What the cache builder reads: each distinct image once and each text once (no image decoding in
the text pass), as datasets of rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from data_modules.images import load_image
from rlrt.cache.content import CachedData, Sample, content_fingerprint, image_table


class ImageRowsDataset(Dataset):
    """`{"row": int, "image": uint8 (3, S, S)}` for each of the given image files."""

    def __init__(self, paths: list[Path], rows: np.ndarray, image_size: int) -> None:
        self.paths = paths
        self.rows = rows
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.rows[index])
        return {"row": row, "image": load_image(self.paths[row], self.image_size)}


class TextRowsDataset(Dataset):
    """`{"row": int, "text": str}` for the given sample rows."""

    def __init__(self, texts: list[str], rows: np.ndarray) -> None:
        self.texts = texts
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.rows[index])
        return {"row": row, "text": self.texts[row]}


@dataclass
class CacheSources:
    """One split as the cache builder needs it; `content_sha256` and `image_stats` as
    `content_fingerprint` returns them."""

    ids: list[str]
    texts: list[str]
    image_paths: list[Path]
    sample_image_row: np.ndarray
    image_size: int
    content_sha256: str = ""
    image_stats: np.ndarray | None = None

    def image_dataset(self, rows: np.ndarray) -> ImageRowsDataset:
        return ImageRowsDataset(self.image_paths, rows, self.image_size)

    def text_dataset(self, rows: np.ndarray) -> TextRowsDataset:
        return TextRowsDataset(self.texts, rows)


def cache_sources(records: list[Sample], image_size: int, root: Path | None = None) -> CacheSources:
    paths, sample_rows = image_table(records)
    digest, stats = content_fingerprint(records, root)
    return CacheSources(
        ids=[r.id for r in records],
        texts=[r.text for r in records],
        image_paths=paths,
        sample_image_row=sample_rows,
        image_size=image_size,
        content_sha256=digest,
        image_stats=stats,
    )


def split_sources(datamodule: CachedData, split: str) -> CacheSources:
    """The distinct images and the texts of one split of `datamodule`."""
    return cache_sources(datamodule.dataset(split).records, datamodule.image_size, datamodule.root)
