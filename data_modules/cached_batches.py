"""Training and evaluation batches read from the feature cache (`rlrt cache`) instead of decoded
and encoded: whole batches of rows, gathered with one fancy index per memory-mapped array."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rlrt.cache.content import CachedData, cache_identity, check_content, content_fingerprint
from rlrt.cache.format import CacheMemoryError, check_fields
from rlrt.cache.reader import SplitCacheReader
from rlrt.cache.resident import ResidentSplit, stored_bytes
from rlrt.engine.units import human_bytes
from rlrt.features import Features

from .records import SampleRecord
from .resumable import ResumableDataLoader


class CachedDataModule(CachedData, Protocol):
    """What `open_cached_split` reads of a data module (`ImageTextDataModule` is one; naming it
    here would make the base import its own importer)."""

    feature_cache: Path
    task: str
    num_classes: int


def open_cached_split(datamodule: CachedDataModule, split: str) -> CachedBatches:
    """The batches of `split` from `datamodule.feature_cache`, after checking that the cache was
    built for these samples (ids, order) and that their files did not change since.

    Raises `CacheMismatchError` (or its `CacheStaleError`) naming the cache folder otherwise.
    """
    records = datamodule.dataset(split).records
    reader = SplitCacheReader(datamodule.feature_cache / split)
    check_fields(reader.manifest, cache_identity(datamodule, split), reader.folder)
    # the dataset's files edited in place under the same ids: one stat per image file
    check_content(reader, *content_fingerprint(records, datamodule.root))
    dummy = SplitCacheReader(datamodule.feature_cache / "dummy")
    labels = labels_tensor(records, datamodule.task, datamodule.num_classes)
    text_present = torch.tensor([r.text_present for r in records], dtype=torch.bool)
    return CachedBatches(reader, dummy, labels, text_present, split=split)


class CachedBatches(Dataset):
    """Whole batches from the cache: the DataLoader's batched fetch (`__getitems__`) returns a
    batch dict, reading each array once per batch.

    Batch dict: `features` (`Features` of `B` samples, float16 as stored: the model casts them
    to its own dtype on its device, so a GPU receives half the bytes), `dummy_features`
    (`Features` of one sample: the dummy inputs), `label`, `id`, `image_present`,
    `text_present` (bool `(B,)`).

    With `resident` set, `features` is None and the batch carries `cache_rows` (int64 `(B,)`)
    and `cache_split` instead: the data module's `on_after_batch_transfer` gathers the features
    on the device the rows were moved to (`gather_on_device`), from the split's copy there.
    """

    def __init__(
        self,
        reader: SplitCacheReader,
        dummy: SplitCacheReader,
        labels: torch.Tensor,
        text_present: torch.Tensor,
        split: str = "",
    ) -> None:
        self.reader = reader
        self.dummy = dummy
        self.labels = labels  # (N, C) float32 multi-hot or (N,) int64
        self.text_present = text_present  # (N,) bool: False where the record has no text
        self.split = split
        self.resident = False  # set by the data module when its loader is made
        self.host_fallback = True  # False: a copy that does not fit is an error (`always`)
        self._on_device: ResidentSplit | None = None
        self._copy_failed = False  # the device copy did not fit: every batch from the host

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.__getitems__([row])

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        index = np.asarray(rows, dtype=np.int64)
        extra: dict[str, Any] = {}
        if self.resident:  # row numbers only: the features are gathered on the device
            features, has_image = None, torch.from_numpy(self.reader.sample_image_row[index] >= 0)
            extra = {"cache_rows": torch.from_numpy(index), "cache_split": self.split}
        else:
            features, has_image = self.reader.gather(index)
        dummy, _ = self.dummy.gather(np.zeros(1, dtype=np.int64))
        return {
            "features": features,
            "dummy_features": dummy,
            "label": self.labels[torch.from_numpy(index)],
            "id": [self.reader.ids[i] for i in rows],
            "image_present": has_image,
            "text_present": self.text_present[torch.from_numpy(index)],
            **extra,
        }

    def gather_on_device(self, rows: torch.Tensor) -> Features:
        """Features of `rows` `(B,)` from this split's copy in the memory of `rows`' device,
        made on first use (one copy of the stored arrays, kept for the next epochs).

        When the copy does not fit after all (the model's own memory grew since the data module
        decided), a split kept there by `auto` is read from the host from now on, with one
        warning; one kept there by `always` ends the run in one line."""
        if self._copy_failed:  # a batch the loader had fetched ahead of the fallback
            features, _ = self.reader.gather(rows.cpu().numpy())
            return features.to(rows.device)
        if self._on_device is None or self._on_device.device != rows.device:
            self._on_device = None  # the old copy's memory first
            try:
                self._on_device = ResidentSplit(self.reader, rows.device)
            except (torch.OutOfMemoryError, MemoryError) as err:
                return self._read_from_host(rows, err)
        features, _ = self._on_device.gather(rows)
        return features

    def _read_from_host(self, rows: torch.Tensor, err: BaseException) -> Features:
        size = human_bytes(stored_bytes(self.reader))
        if not self.host_fallback:
            raise CacheMemoryError(
                f"feature cache {self.reader.folder} ({size}) does not fit in the memory of "
                f"{rows.device} ({type(err).__name__}); use --data.init_args."
                "cache_in_device_memory auto or never to read it from the host"
            ) from err
        if rows.device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(
            f"feature cache {self.reader.folder} ({size}) did not fit in the memory of "
            f"{rows.device}; reading its batches from the host",
            stacklevel=2,
        )
        self.resident = False  # the loader's next batches carry their features again
        self._copy_failed = True
        return self.gather_on_device(rows)


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
    cores (it competes with the step's own threads). With a GPU they are pinned
    (`Features.pin_memory`), so the copy to the device does not block the host.
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
        pin_memory=torch.cuda.is_available(),
    )
