"""What a DataModule hands to the feature cache: sources to build it, and batches read from it.

Building reads each distinct image once and each text once (no image decoding in the text pass);
reading gathers whole batches of rows from the memory-mapped arrays, one fancy index per array.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rlrt.feature_cache import SplitCacheReader

from .base import SampleRecord, load_image
from .resumable import ResumableDataLoader


def image_table(records: list[SampleRecord]) -> tuple[list[Path], np.ndarray]:
    """Distinct image files in first-seen order, and each sample's row among them (-1: none)."""
    rows: dict[Path, int] = {}
    sample_rows = np.full(len(records), -1, dtype=np.int64)
    for index, record in enumerate(records):
        if record.image_path is not None:
            sample_rows[index] = rows.setdefault(record.image_path, len(rows))
    return list(rows), sample_rows


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


def collate_rows(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {"row": torch.tensor([i["row"] for i in items], dtype=torch.int64)}
    if "image" in items[0]:
        batch["image"] = torch.stack([i["image"] for i in items])
    else:
        batch["text"] = [i["text"] for i in items]
    return batch


def image_stats(paths: list[Path]) -> np.ndarray:
    """`(M, 2)` int64: each image file's `st_size` and `st_mtime_ns` (-1, -1 if it is gone)."""
    stats = np.full((len(paths), 2), -1, dtype=np.int64)
    for row, path in enumerate(paths):
        try:
            found = os.stat(path)
        except OSError:
            continue
        stats[row] = found.st_size, found.st_mtime_ns
    return stats


def content_fingerprint(
    records: list[SampleRecord], root: Path | None = None
) -> tuple[str, np.ndarray]:
    """What a split's features depend on, hashed cheaply: SHA-256 of every sample's id and text
    (as the dataset read it: a text may live in a JSON or CSV file that holds other things too)
    and its image file (the path, relative to `root` when inside it, with its size and
    modification time). Returns the hex digest and `image_stats` of the distinct image files in
    `image_table` order (stored beside the cache to count the files that changed).

    Cost: one `stat` per distinct image file (no image is opened or decoded) and hashing the
    texts, which are in memory already: well under a second for MM-IMDB or SNLI-VE.
    """
    paths, sample_rows = image_table(records)
    stats = image_stats(paths)
    digest = hashlib.sha256(b"rlrt content fingerprint 1\n")
    for path, (size, mtime) in zip(paths, stats.tolist()):
        shown = path
        if root is not None:
            with contextlib.suppress(ValueError):
                shown = Path(path).relative_to(root)
        digest.update(json.dumps([str(shown), size, mtime]).encode() + b"\n")
    digest.update(b"samples\n")
    for record, row in zip(records, sample_rows.tolist()):
        digest.update(json.dumps([record.id, record.text, row]).encode() + b"\n")
    return digest.hexdigest(), stats


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


def cache_sources(
    records: list[SampleRecord], image_size: int, root: Path | None = None
) -> CacheSources:
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


class CachedBatches(Dataset):
    """Whole batches from the cache: the DataLoader's batched fetch (`__getitems__`) returns a
    batch dict, reading each array once per batch.

    Batch dict: `features` (`Features` of `B` samples, float16 as stored: the model casts them
    to its own dtype on its device, so a GPU receives half the bytes), `dummy_features`
    (`Features` of one sample: the dummy inputs), `label`, `id`, `image_present`,
    `text_present` (bool `(B,)`).
    """

    def __init__(
        self,
        reader: SplitCacheReader,
        dummy: SplitCacheReader,
        labels: torch.Tensor,
        text_present: torch.Tensor,
    ) -> None:
        self.reader = reader
        self.dummy = dummy
        self.labels = labels  # (N, C) float32 multi-hot or (N,) int64
        self.text_present = text_present  # (N,) bool: False where the record has no text

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        index = np.asarray(rows, dtype=np.int64)
        features, has_image = self.reader.gather(index)
        dummy, _ = self.dummy.gather(np.zeros(1, dtype=np.int64))
        return {
            "features": features,
            "dummy_features": dummy,
            "label": self.labels[torch.from_numpy(index)],
            "id": [self.reader.ids[i] for i in rows],
            "image_present": has_image,
            "text_present": self.text_present[torch.from_numpy(index)],
        }


def labels_tensor(records: list[SampleRecord], task: str, num_classes: int) -> torch.Tensor:
    """`(N, C)` float32 multi-hot (multilabel) or `(N,)` int64 labels in record order."""
    if task == "multilabel":
        labels = torch.zeros(len(records), num_classes, dtype=torch.float32)
        for index, record in enumerate(records):
            labels[index, list(record.label)] = 1.0
        return labels
    return torch.tensor([int(r.label) for r in records], dtype=torch.int64)


def _already_batched(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def cached_loader(
    batches: CachedBatches,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool,
) -> DataLoader:
    """A plain DataLoader (so Lightning can shard it across devices) whose sampler, generator and
    batching are those of the online loader: the same samples arrive in the same batches.

    Batches are read in the main process: a worker process would have to send every batch's tens
    of MB back through shared memory, and a background reading thread was measured slower on 2
    cores (it competes with the step's own threads).
    """
    loader_class = ResumableDataLoader if shuffle else DataLoader  # as the online loader
    return loader_class(
        batches,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        collate_fn=_already_batched,
        num_workers=0,
    )
