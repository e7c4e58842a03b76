"""Shared base of the image-text DataModules: records, validation, decoding, batching.

A dataset subclass only says how to read one split's records (`read_split`) and what its classes
are; everything else lives here, once:

- **Validation at setup** (cheap, every record): id is a non-empty unique string (unique after
  Unicode normalisation, `ids.py`), label is known, the image path resolves inside the dataset
  root (`../`, absolute paths and symlinks out of the root are refused), it is a regular file
  (a directory, FIFO or symlink loop is reported; a FIFO is never opened), and its header
  parses. For JPEGs the last KiB must hold the end-of-image marker, which catches truncated
  files without decoding them (entropy-coded data cannot contain `FF D9`).
  `verify_images="decode"` decodes every image at setup instead (exact, but slow on large
  datasets).
- **Safety net at load time**: an image that passed setup but fails to decode in `__getitem__`
  (rare: corrupt entropy data) is dropped from its batch with `on_bad_sample="skip"` and logged
  with its id from the worker; with `"error"` it raises. A batch may therefore hold fewer samples
  than `batch_size`, in the extreme zero (`image` of shape `(0, 3, S, S)`).
- **Policy**: `on_bad_sample="skip"` drops bad samples and keeps `(split, id, reason)` in
  `bad_samples` (summary warning per split, `write_bad_sample_report(path)` for the full list,
  written as `bad_samples.json` into the run directory whenever a trainer calls `setup`);
  `"error"` raises `BadSampleError` with one line at the first bad sample.
- **Empty text is not bad**: a sample whose text is present but empty is kept with text "".
  A text over `MAX_TEXT_CHARS` characters is cut there, with a warning (`text_limits.py`).

Batch dict (docs/design.md, section 2), `B` samples, `S = image_size`, `C = num_classes`:
    image          uint8 `(B, 3, S, S)`, RGB, shorter side resized to S (bicubic), centre crop
    text           list[str] of length B ("" when a sample has no text)
    label          float32 `(B, C)` multi-hot (multilabel) or int64 `(B,)` (multiclass)
    id             list[str], stable sample ids
    image_present  bool `(B,)`, True from the reader (perturbation callbacks edit it)
    text_present   bool `(B,)`, False where the record has no text (`text_present=False`)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from rlrt.cache.resident import (
    ResidentMode,
    check_mode,
    free_device_memory,
    keep_on_device,
    stored_bytes,
)
from rlrt.engine.files import atomic_write_json

from .cached_batches import CachedBatches, cached_loader, open_cached_split
from .ids import id_key, same_as
from .images import IMAGE_ERRORS, load_image, probe_image
from .reasons import not_a_file, one_line, os_reason, short_repr
from .records import (
    BadSample,
    BadSampleError,
    DatasetNotFoundError,
    Rejected,
    SampleRecord,
    SampleRejected,
)
from .resumable import ResumableDataLoader
from .text_limits import MAX_TEXT_CHARS, cut_text

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
Task = Literal["multilabel", "multiclass"]
_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: SPLITS,
}
BAD_SAMPLE_REPORT = "bad_samples.json"  # written into the run directory at setup
MAX_REASON = 2000  # characters of a bad-sample reason (a pathological value can be huge)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack sample dicts into the batch dict of the module docstring.

    Samples whose image failed to decode (key `bad_reason` set) are dropped here.
    """
    keep = [s for s in samples if s["bad_reason"] is None]
    rows = keep or samples[:1]  # all dropped: stack one and slice to an empty batch
    n = len(keep)
    images = np.stack([s["image"].numpy() for s in rows])  # (B, 3, S, S); numpy: see load_image
    return {
        "image": torch.from_numpy(images)[:n],
        "text": [s["text"] for s in keep],
        "label": torch.stack([s["label"] for s in rows])[:n],
        "id": [s["id"] for s in keep],
        "image_present": torch.tensor([s["image_present"] for s in rows], dtype=torch.bool)[:n],
        "text_present": torch.tensor([s["text_present"] for s in rows], dtype=torch.bool)[:n],
    }


class ImageTextDataset(Dataset):
    """Validated records of one split; `__getitem__` decodes one sample.

    Sample dict: `image` uint8 `(3, S, S)`, `text` str, `label` float32 `(C,)` multi-hot or int64
    `()`, `id` str, `image_present` / `text_present` bool, `bad_reason` (None unless decoding
    failed; `collate_samples` drops such samples).

    `__getitems__` (what a batched DataLoader calls, in its workers) builds a whole batch and
    decodes each distinct image file once: SNLI-VE hypotheses and MM-IMDB `text_unit="all"` plots
    share images, and their samples then share one decoded tensor.
    """

    def __init__(
        self,
        records: list[SampleRecord],
        *,
        split: str,
        task: Task,
        num_classes: int,
        image_size: int,
        on_bad_sample: Literal["skip", "error"],
    ) -> None:
        self.records = records
        self.split = split
        self.task = task
        self.num_classes = num_classes
        self.image_size = image_size
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._sample(index, {})

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        decoded: dict[Path, Tensor | str] = {}  # path -> image, or the reason it failed
        return [self._sample(index, decoded) for index in indices]

    def _sample(self, index: int, decoded: dict[Path, Tensor | str]) -> dict[str, Any]:
        rec = self.records[index]
        s = self.image_size
        bad_reason = None
        image = torch.from_numpy(np.zeros((3, s, s), dtype=np.uint8))  # no image: zeros
        if rec.image_path is not None:
            if rec.image_path not in decoded:
                try:
                    decoded[rec.image_path] = load_image(rec.image_path, s)
                except IMAGE_ERRORS as err:
                    decoded[rec.image_path] = f"unreadable image: {one_line(err)}"
                    if self.on_bad_sample == "error":
                        raise BadSampleError(
                            f"{self.split} sample {rec.id!r}: {decoded[rec.image_path]}"
                        ) from err
            if isinstance(decoded[rec.image_path], str):
                bad_reason = decoded[rec.image_path]
                log.warning(
                    "%s sample %r dropped from its batch: %s", self.split, rec.id, bad_reason
                )
            else:
                image = decoded[rec.image_path]
        if self.task == "multilabel":
            label = torch.zeros(self.num_classes, dtype=torch.float32)  # (C,)
            label[torch.tensor(rec.label, dtype=torch.int64)] = 1.0
        else:
            label = torch.tensor(rec.label, dtype=torch.int64)  # ()
        return {
            "image": image,
            "text": rec.text,
            "label": label,
            "id": rec.id,
            "image_present": rec.image_path is not None,
            "text_present": rec.text_present,
            "bad_reason": bad_reason,
        }


class ImageTextDataModule(L.LightningDataModule):
    """Base DataModule for image-text classification; subclasses implement `read_split`.

    Args:
        root: dataset folder, as distributed (see docs/datasets.md). Nothing is downloaded.
        image_size: side `S` of the square uint8 images (the image encoder's input size).
        batch_size: training batch size.
        eval_batch_size: val/test/predict batch size (default: `batch_size`).
        num_workers: DataLoader worker processes (persistent when > 0).
        on_bad_sample: "skip" drops and reports bad samples, "error" raises at the first.
        seed: seed of the training shuffle.
        limit_samples: keep at most this many valid samples per split, in file order (smoke runs;
            reading stops there, so later bad samples are not reported).
        verify_images: "header" (cheap checks at setup, see module docstring) or "decode"
            (decode every image at setup).
        feature_cache: a folder built by `rlrt cache` for this config: batches then carry the
            stored `Features` (and no pixels or text), and the frozen encoders are skipped.
        cache_in_device_memory: `auto` copies each cached split once into the GPU's memory when
            it takes at most half the free memory, and gathers batches there (host reads cap
            the paper's shapes near 2,000 samples/s); `always` (also a CPU's memory), `never`.
    """

    dataset_name: ClassVar[str] = "dataset"
    accepted_layouts: ClassVar[str] = ""
    source: ClassVar[str] = ""
    # Entries per split in the complete official files (docs/datasets.md); `rlrt inspect-data` warns
    # when `source_count(split)` differs (a partial copy is the usual cause).
    standard_sizes: ClassVar[dict[str, int]] = {}
    predict_split: ClassVar[str] = "test"  # what `rlrt predict` reads: a dataset's test split

    def __init__(
        self,
        *,
        root: str,
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        on_bad_sample: Literal["skip", "error"] = "skip",
        seed: int = 0,
        limit_samples: int | None = None,
        verify_images: Literal["header", "decode"] = "header",
        feature_cache: str | None = None,
        cache_in_device_memory: ResidentMode = "auto",
    ) -> None:
        super().__init__()
        if on_bad_sample not in ("skip", "error"):
            raise ValueError(f"on_bad_sample must be 'skip' or 'error', got {on_bad_sample!r}")
        if verify_images not in ("header", "decode"):
            raise ValueError(f"verify_images must be 'header' or 'decode', got {verify_images!r}")
        for name, value in (
            ("image_size", image_size),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("limit_samples", limit_samples),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.on_bad_sample = on_bad_sample
        self.seed = seed
        self.limit_samples = limit_samples
        self.verify_images = verify_images
        self.feature_cache = None if feature_cache is None else Path(feature_cache).expanduser()
        self.feature_cache_manifest: dict[str, Any] | None = None  # read by the model's checks
        check_mode(cache_in_device_memory)
        self.cache_in_device_memory = cache_in_device_memory
        self._cached: dict[str, Any] = {}
        self.bad_samples: list[BadSample] = []
        self._datasets: dict[str, ImageTextDataset] = {}

    # ---- what a subclass provides ----------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Class names in label-index order."""
        raise NotImplementedError

    @property
    def task(self) -> Task:
        raise NotImplementedError

    def read_split(self, split: str) -> Iterable[SampleRecord | Rejected]:
        """Yield the records of `split` ("train", "val" or "test") in a stable order.

        Yield `Rejected(id, "kind: detail")` for samples the reader itself refuses (malformed
        file, unknown label, ...); image checks are done by the base. Raise
        `self.not_found(...)` when a required file is missing.
        """
        raise NotImplementedError

    # ---- helpers for subclasses ------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def inside_root(self, path: Path) -> Path:
        """Return `path` if it resolves (symlinks followed) inside the root, else raise
        `SampleRejected("outside dataset root: ...")` (or `"unreadable file: a symlink loop"`)."""
        try:
            resolved, root = path.resolve(), self.root.resolve()
        except RuntimeError as err:  # a symlink loop (Python < 3.13; 3.13 resolves what it can)
            raise SampleRejected(f"unreadable file: a symlink loop: {path}") from err
        if not resolved.is_relative_to(root):
            raise SampleRejected(f"outside dataset root: {path}")
        return path

    def not_found(self, missing: Path, what: str, hint: str = "") -> DatasetNotFoundError:
        """The error for a missing required file or folder (raise it); `hint` ends a sentence."""
        return DatasetNotFoundError(
            f"{self.dataset_name}: {what} not found; looked for {missing}{hint}. "
            f"Accepted layouts: {self.accepted_layouts}. "
            f"Obtain the dataset from {self.source} (it is never downloaded automatically)."
        )

    def root_hint(self, relative: str) -> str:
        """Hint for a missing `root/relative`: the root itself is missing, or the file lies one
        or two folders deeper (a root given one level too high)."""
        if not self.root.is_dir():
            return f" (the root folder {self.root} does not exist)"
        depth = len(Path(relative).parts)
        for pattern in (f"*/{relative}", f"*/*/{relative}"):
            found = sorted(self.root.glob(pattern))
            if found:
                return f" (did you mean root={found[0].parents[depth - 1]}?)"
        return ""

    def expected_split_sizes(self) -> dict[str, int]:
        """`standard_sizes` as they apply to this configuration (see Food101's val split)."""
        return dict(self.standard_sizes)

    def source_count(self, split: str) -> int:
        """Entries of `split` read from the files (kept + dropped), comparable with
        `expected_split_sizes()`; builds the split if needed."""
        kept = len(self.dataset(split))
        return kept + sum(b.split == split for b in self.bad_samples)

    # ---- Lightning hooks ---------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        splits = _STAGE_SPLITS[stage] if stage != "predict" else (self.predict_split,)
        for split in splits:
            self.dataset(split)
            if self.feature_cache is not None:
                self._cached_batches(split)  # a stale or foreign cache fails here, before training
        self._write_run_report()

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader("train", self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.limit_val_batches != 0 and not self.dataset("val"):
            # Lightning would skip validation with three warnings, and no best checkpoint chosen
            raise ValueError(
                f"{self._empty_split_message('val')}; validation needs samples (the best "
                "checkpoint is chosen on them): add some, or pass --trainer.limit_val_batches=0 "
                "to train without validation (the last checkpoint is then the result)"
            )
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, self.eval_batch_size)

    # ---- datasets and reports ----------------------------------------------------------------

    def dataset(self, split: str) -> ImageTextDataset:
        """The validated dataset of `split`, built (and its bad samples reported) on first use."""
        if split not in (*SPLITS, self.predict_split):
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._datasets:
            self._datasets[split] = self._build(split)
        return self._datasets[split]

    def write_bad_sample_report(self, path: str | Path) -> None:
        """Write the dropped samples of the splits built so far as JSON (atomically):
        `{"dataset", "root", "kept": {split: n}, "counts": {split: n_dropped}, "samples":
        [{"split", "id", "reason"}, ...]}`; a built split without drops counts 0."""
        counts = dict.fromkeys(self._datasets, 0)
        counts.update(Counter(b.split for b in self.bad_samples))
        report = {
            "dataset": self.dataset_name,
            "root": str(self.root),
            "kept": {split: len(ds) for split, ds in self._datasets.items()},
            "counts": counts,
            "samples": [b._asdict() for b in self.bad_samples],
        }
        atomic_write_json(path, report)

    def _write_run_report(self) -> None:
        """With a trainer attached, write `bad_samples.json` into its run directory (beside
        `config.yaml`), so every fit / validate / test run records what its data dropped."""
        trainer = self.trainer
        if trainer is None or trainer.logger is None:
            return  # no run directory (logger off): nothing to put the report beside
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks, rank zero writes
        if log_dir is not None and trainer.is_global_zero:
            self.write_bad_sample_report(Path(log_dir) / BAD_SAMPLE_REPORT)

    def _loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        if shuffle and len(self.dataset(split)) == 0:
            raise ValueError(self._empty_split_message(split))
        # A ragged last training batch would be the smallest one L_CCA ever sees.
        drop_last = shuffle and len(self.dataset(split)) > batch_size
        if self.feature_cache is not None:
            batches = self._cached_batches(split)
            batches.resident = self._keep_on_device(batches)
            batches.host_fallback = self.cache_in_device_memory != "always"
            return cached_loader(
                batches,
                batch_size,
                shuffle=shuffle,
                generator=generator,
                drop_last=drop_last,
            )
        # The training loader resumes mid-epoch in the same order (see resumable.py).
        loader_class = ResumableDataLoader if shuffle else DataLoader
        return loader_class(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_samples,
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
        )

    def _empty_split_message(self, split: str) -> str:
        """One line for a split without samples: were they all dropped, or none found?"""
        dropped = sum(b.split == split for b in self.bad_samples)
        if dropped:
            why = (
                f"all {dropped} of its samples were dropped as bad; their ids and reasons are in "
                f"{BAD_SAMPLE_REPORT} in the run directory (or run `rlrt inspect-data`)"
            )
        else:
            why = "no samples were found in it (check the files, or run `rlrt inspect-data`)"
        return f"{self.dataset_name}: the {split} split under {self.root} is empty: {why}"

    def _keep_on_device(self, batches: CachedBatches) -> bool:
        """Whether `batches`' split is gathered from a copy in the trainer's device memory
        (`cache_in_device_memory`); `auto` counts the splits already kept there as taken."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        free = free_device_memory(device)
        if free is not None:  # splits decided for but not copied yet take their share too
            free -= sum(
                stored_bytes(b.reader)
                for b in self._cached.values()
                if b is not batches and b.resident and b._on_device is None
            )
        return keep_on_device(
            self.cache_in_device_memory, device, stored_bytes(batches.reader), free
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A batch of a split kept in device memory arrives as row numbers (`cache_rows`, on
        the device now): gather its features there."""
        if isinstance(batch, dict) and "cache_rows" in batch:
            batches = self._cached[batch.pop("cache_split")]
            batch["features"] = batches.gather_on_device(batch.pop("cache_rows"))
        return batch

    def _cached_batches(self, split: str) -> CachedBatches:
        """The split's batches from the feature cache, opened (and checked) once."""
        if split not in self._cached:
            self._cached[split] = open_cached_split(self, split)
            self.feature_cache_manifest = self._cached[split].reader.manifest
        return self._cached[split]

    def _build(self, split: str) -> ImageTextDataset:
        records: list[SampleRecord] = []
        seen: dict[str, str] = {}  # id_key(id) -> the id as read first
        cut: list[str] = []  # ids of the texts cut to MAX_TEXT_CHARS
        image_reasons: dict[Path, str | None] = {}  # images shared by several samples: check once
        n_bad = len(self.bad_samples)
        for item in self.read_split(split):
            if isinstance(item, Rejected):
                self._reject(split, item.id, item.reason)
                continue
            reason = self._check(item, seen, image_reasons)
            if reason is not None:
                self._reject(split, item.id, reason)
                continue
            seen[id_key(item.id)] = item.id
            if len(item.text) > MAX_TEXT_CHARS:
                item.text = cut_text(item.text)
                cut.append(item.id)
            records.append(item)
            if self.limit_samples is not None and len(records) >= self.limit_samples:
                break
        dropped = self.bad_samples[n_bad:]
        if dropped:
            kinds = Counter(b.reason.split(":")[0] for b in dropped)
            rank_zero_warn(
                f"{self.dataset_name} {split}: dropped {len(dropped)} bad sample(s) "
                f"({', '.join(f'{k}: {n}' for k, n in kinds.most_common())}), kept "
                f"{len(records)}; ids and reasons in .bad_samples / write_bad_sample_report()"
            )
        if cut:
            rank_zero_warn(
                f"{self.dataset_name} {split}: cut {len(cut)} text(s) longer than "
                f"{MAX_TEXT_CHARS:,} characters to that length (the first: {short_repr(cut[0])}); "
                "the text encoder reads far fewer (data_modules/text_limits.py)"
            )
        rank_zero_info(f"{self.dataset_name} {split}: {len(records)} samples")  # shown by the CLI
        return ImageTextDataset(
            records,
            split=split,
            task=self.task,
            num_classes=self.num_classes,
            image_size=self.image_size,
            on_bad_sample=self.on_bad_sample,
        )

    def _check(
        self, rec: SampleRecord, seen: dict[str, str], image_reasons: dict[Path, str | None]
    ) -> str | None:
        """Reason why `rec` is bad, or None. `seen`: the split's ids so far (`id_key` -> id)."""
        if not isinstance(rec.id, str) or not rec.id:
            return f"invalid id: {short_repr(rec.id)}"
        first = seen.get(id_key(rec.id))
        if first is not None:
            return f"duplicate id: already read in this split{same_as(rec.id, first)}"
        if not isinstance(rec.text, str):
            return f"invalid text: {type(rec.text).__name__}"
        labels = rec.label if self.task == "multilabel" else [rec.label]
        if not isinstance(labels, list) or not all(
            isinstance(c, int) and 0 <= c < self.num_classes for c in labels
        ):
            return f"unknown label: {short_repr(rec.label)}"
        if rec.image_path is None:
            return None
        path = rec.image_path
        if path not in image_reasons:
            image_reasons[path] = self._check_image(path)
        return image_reasons[path]

    def _check_image(self, path: Path) -> str | None:
        try:
            return self._check_image_path(path)
        except (OSError, ValueError) as err:  # a name too long, a NUL byte, ...
            return f"invalid image path: {os_reason(err)}: {path!s}"

    def _check_image_path(self, path: Path) -> str | None:
        kind = not_a_file(path)  # a FIFO is never opened: reading one would wait for a writer
        if kind is not None:
            return f"unreadable image: {kind}, not an image file: {path}"
        try:
            self.inside_root(path)
        except SampleRejected as err:
            return err.reason
        if not path.is_file():
            return f"missing image: {path}"
        if self.verify_images == "header":
            return probe_image(path)
        try:
            load_image(path, self.image_size)
        except IMAGE_ERRORS as err:
            return f"unreadable image: {one_line(err)}"
        return None

    def _reject(self, split: str, sample_id: str, reason: str) -> None:
        reason = one_line(reason)
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 3] + "..."
        if self.on_bad_sample == "error":
            raise BadSampleError(
                f"{self.dataset_name} {split} sample {sample_id!r}: {reason} "
                f"(on_bad_sample='skip' drops such samples and reports them)"
            )
        self.bad_samples.append(BadSample(split, str(sample_id), reason))
