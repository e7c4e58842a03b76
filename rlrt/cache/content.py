"""What a split's cached features depend on: which samples in which order (`cache_identity`) and
their content, fingerprinted cheaply (`content_fingerprint`). Both go into a split's manifest when
the cache is built and are compared when it is opened: `check_content` refuses a stale split."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rlrt.cache.format import CONTENT_FIELD, REBUILD, CacheStaleError, ids_digest
from rlrt.cache.reader import SplitCacheReader


class Sample(Protocol):
    """What the cache reads of a sample (`data_modules.records.SampleRecord` is one). The cache
    sits below the data modules: it names what it needs, not their classes."""

    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def image_path(self) -> Path | None: ...


class SplitRecords(Protocol):
    """A split as the cache reads it: its samples in order (an `ImageTextDataset` is one)."""

    @property
    def records(self) -> list[Sample]: ...


class CachedData(Protocol):
    """A data module as the cache reads it (`data_modules.base.ImageTextDataModule` is one)."""

    image_size: int
    root: Path | None

    def dataset(self, split: str) -> SplitRecords: ...


def cache_identity(datamodule: CachedData, split: str) -> dict[str, Any]:
    """The data side of a cache manifest: which data module, which samples, in which order."""
    ids = [r.id for r in datamodule.dataset(split).records]
    cls = type(datamodule)
    return {
        "dataset": f"{cls.__module__}.{cls.__qualname__}",
        "split": split,
        "num_samples": len(ids),
        "ids_sha256": ids_digest(ids),
    }


def image_table(records: list[Sample]) -> tuple[list[Path], np.ndarray]:
    """Distinct image files in first-seen order, and each sample's row among them (-1: none)."""
    rows: dict[Path, int] = {}
    sample_rows = np.full(len(records), -1, dtype=np.int64)
    for index, record in enumerate(records):
        if record.image_path is not None:
            sample_rows[index] = rows.setdefault(record.image_path, len(rows))
    return list(rows), sample_rows


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


def content_fingerprint(records: list[Sample], root: Path | None = None) -> tuple[str, np.ndarray]:
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


def stale_message(folder: Path, changed_images: int | None, num_images: int) -> str:
    """One line: the cache `folder` (a split folder) is stale, with what changed if known."""
    if changed_images:
        what = f"sizes or modification times of {changed_images} of {num_images} image files"
    elif changed_images == 0:
        what = "the texts or image paths of some samples; no image file changed"
    else:
        what = "sizes or modification times of image files, or the texts"
    return (
        f"feature cache {folder.parent}: the {folder.name} split's dataset files changed since "
        f"the cache was built ({what}); rebuild it with `rlrt cache` (same config) and --overwrite"
    )


def check_content(reader: SplitCacheReader, digest: str, stats: np.ndarray) -> None:
    """Refuse (`CacheStaleError`) a split whose manifest's `content_sha256` differs from `digest`,
    the dataset's as set up now; `stats` (`(M, 2)` sizes and mtimes) count the changed image
    files. A cache built before the field existed is refused too."""
    saved = reader.manifest.get(CONTENT_FIELD)
    if saved is None:
        raise CacheStaleError(
            f"feature cache {reader.folder} has no {CONTENT_FIELD} (built by an older rlrt, "
            "which did not record the dataset files' sizes and modification times); "
            f"{REBUILD}"
        )
    if saved != digest:
        raise CacheStaleError(
            stale_message(reader.folder, changed_image_files(reader.folder, stats), len(stats))
        )


def changed_image_files(folder: Path, stats: np.ndarray) -> int | None:
    """How many rows of `stats` differ from the split's stored `image_stats.npy` (None when it is
    missing or of another shape)."""
    try:
        saved = np.load(Path(folder) / "image_stats.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if saved.shape != stats.shape:
        return None
    return int((saved != stats).any(axis=1).sum())
