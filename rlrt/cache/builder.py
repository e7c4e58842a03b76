"""Build a feature cache: run the frozen encoders once over every split and store the pooled
Features.

Every split's images and texts go through one `trainer.predict` (`build_splits`), so the
encoders move to the device once, and a distributed trainer shards the samples across
processes; every process writes its rows into the same memory-mapped files and the global-rank-0
process writes the manifests. A killed build resumes where it stopped: rows are flagged done only
once flushed, and a rerun skips them without decoding or encoding them again. The command around
it (arguments, the lock, which splits need building) is `rlrt.commands.cache`.

What runs where, so that the device never waits for the host: the DataLoader workers read and
decode images and tokenise texts (`collate_pending` with the encoder's `TextTokenizer`); the main
process only launches the encoders (`FeatureExtractor.predict_step`, whose outputs stay on the
device) and hands each batch to `RowWriter`, whose one background thread copies the outputs to
the host, quantises them for an int8 cache and writes and flushes their rows, at most
`RowWriter.max_in_flight` batches behind the device. Its errors are raised in the main process
(at the next batch or at the end of the predict) and every write is done before the manifests.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from rlrt.cache.content import changed_image_files, stale_message
from rlrt.cache.format import (
    CONTENT_FIELD,
    CacheCorruptError,
    CacheMismatchError,
    CacheStaleError,
    Shapes,
    first_difference,
    load_array,
    read_json,
)
from rlrt.cache.reader import SplitCacheReader, verify_split
from rlrt.cache.writer import SplitCacheWriter
from rlrt.encoders import FrozenImageEncoder, FrozenTextEncoder, TextTokenizer

SPLITS = ("train", "val", "test")


class FeatureExtractor(LightningModule):
    """The frozen encoders alone, for `trainer.predict` over image rows or text rows."""

    def __init__(self, image_encoder: FrozenImageEncoder, text_encoder: FrozenTextEncoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Image batch -> tokens `(L_s, B, N_i, D_i)` + embedding; text batch (tokenised by the
        loader's workers) -> tokens, mask, embedding; float16 (the mask bool) and left on the
        device, not waited for (`RowWriter`'s thread copies them to the host), with the rows (a
        host array) and the segment (split and kind) they belong to. A batch of rows all done
        already (a resumed build) gives an empty `row` and nothing is encoded."""
        out: dict[str, Any] = {"row": batch["row"], "segment": batch["segment"]}
        if len(out["row"]) == 0:
            return out
        if "image" in batch:
            tokens, _, embedding = self.image_encoder(batch["image"])
            out.update(image_tokens=tokens.half(), image_embedding=embedding.half())
        else:
            tokens, mask, embedding = self.text_encoder.encode_tokens(batch["text_inputs"])
            out.update(text_tokens=tokens.half(), text_mask=mask, text_embedding=embedding.half())
        return out


class CacheWriteError(RuntimeError):
    """Writing a batch's rows into a cache folder failed (in `RowWriter`'s thread)."""


class RowWriter(BasePredictionWriter):
    """Writes each predicted batch into the memory-mapped arrays of its segment's split folder,
    and keeps per folder the rows this process encoded and the seconds spent on them.

    The writing runs on one background thread, in batch order: the device-to-host copy of the
    batch's outputs, the int8 quantisation of an int8 cache, the write, and the flush before
    the rows are flagged done (`SplitCacheWriter.write_images` / `write_texts`). The main
    process only hands batches over; with `max_in_flight` batches handed over and not written
    yet it waits for the oldest, which bounds the device memory pending outputs hold. A write
    that fails leaves its rows not flagged done (a rerun resumes them), stops the writes after
    it, and is raised in the main process, naming the cache folder, at the next batch or at the
    end of the predict; the predict ends only once every write is done (`on_predict_end`).

    `written` and `seconds` are kept by the writer thread: read them after the predict. A
    batch's seconds run from the previous batch's write being done to its own, so they hold its
    reading, encoding and writing as they overlap, and add up to the whole pass.
    """

    def __init__(self, max_in_flight: int = 2) -> None:
        super().__init__(write_interval="batch")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.segments: list[Segment] = []
        self.writers: dict[Path, SplitCacheWriter] = {}
        self.written: dict[Path, dict[str, int]] = {}
        self.seconds: dict[Path, float] = {}
        self._mark = 0.0
        self._thread: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future] = deque()
        self._stopped = False  # set by a failed write: the writes queued after it are skipped

    def start(self, segments: list[Segment]) -> None:
        """Write the batches of `segments` (the loader's, in its order), counting afresh."""
        self.segments, self.writers = segments, {}
        self.written = {s.folder: {"images": 0, "texts": 0} for s in segments}
        self.seconds = {s.folder: 0.0 for s in segments}

    def on_predict_start(self, trainer, pl_module) -> None:
        self._stopped = False
        self._mark = time.perf_counter()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """Hand the batch to the writer thread (main process); first raise a failed write."""
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft().result()
        while len(self._in_flight) >= self.max_in_flight:
            self._in_flight.popleft().result()
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="rlrt-cache-writer")
        segment = self.segments[prediction["segment"]]
        self._in_flight.append(self._thread.submit(self._write, segment, prediction))

    def on_predict_end(self, trainer, pl_module) -> None:
        self.drain()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        with contextlib.suppress(Exception):  # `exception` is the one to report
            self.drain()

    def drain(self) -> None:
        """Wait for every batch handed over to be written (raising the first failure), then stop
        the thread and close the arrays."""
        try:
            while self._in_flight:
                self._in_flight[0].result()
                self._in_flight.popleft()
        finally:
            self._stopped = True  # whatever is still queued after a failure is not written
            if self._thread is not None:
                self._thread.shutdown(wait=True)
                self._thread = None
            self._in_flight.clear()
            self._stopped = False
            self.writers = {}

    def _write(self, segment: Segment, prediction: dict[str, Any]) -> None:
        """The writer thread's part of one batch."""
        if self._stopped:
            return
        rows = prediction["row"]
        try:
            if len(rows) > 0:
                self._write_rows(segment, prediction)
        except Exception as err:
            self._stopped = True
            message = (
                f"feature cache {segment.folder}: writing {len(rows)} {segment.kind} rows failed "
                f"({type(err).__name__}: {err}); they are not flagged done, a rerun of `rlrt "
                "cache` resumes them"
            )
            if isinstance(err, OSError) and err.errno is not None:  # a full disk stays one
                raise OSError(err.errno, message) from err
            raise CacheWriteError(message) from err
        now = time.perf_counter()  # this batch's reading, encoding and writing: its folder's
        self.seconds[segment.folder] += now - self._mark
        self._mark = now

    def _write_rows(self, segment: Segment, prediction: dict[str, Any]) -> None:
        if segment.folder not in self.writers:
            self.writers[segment.folder] = SplitCacheWriter(segment.folder).open()
        writer = self.writers[segment.folder]
        rows = prediction["row"]
        host = {k: v.cpu() for k, v in prediction.items() if isinstance(v, torch.Tensor)}
        if segment.kind == "image":
            writer.write_images(rows, host["image_tokens"], host["image_embedding"])
        else:
            writer.write_texts(rows, host["text_tokens"], host["text_mask"], host["text_embedding"])
        self.written[segment.folder][f"{segment.kind}s"] += len(rows)


@dataclass(frozen=True)
class Segment:
    """One pass of a build: the `kind` (`image` or `text`) rows of the split in `folder`."""

    folder: Path
    kind: str
    rows: Dataset  # a SkipDone over the split's image or text rows


class Segments(Dataset):
    """Every segment of a build as one dataset for one `trainer.predict`, each padded with
    skipped items to a multiple of `batch_size * world_size`: batches (also those a distributed
    sampler deals out, `rank::world_size` in order) never straddle two segments, so the encoders
    load onto the device once for all splits and a batch is all images or all texts of a split.
    Items carry `segment`, their index in `segments`."""

    def __init__(self, segments: list[Segment], batch_size: int, world_size: int) -> None:
        self.segments = segments
        block = batch_size * world_size
        self.starts: list[int] = []
        total = 0
        for segment in segments:
            self.starts.append(total)
            total += -(-len(segment.rows) // block) * block  # rounded up to whole blocks
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict[str, Any]:
        which = int(np.searchsorted(self.starts, index, side="right")) - 1
        local = index - self.starts[which]
        rows = self.segments[which].rows
        item = rows[local] if local < len(rows) else {"row": -1, "skip": True}
        return {**item, "segment": which}


class SkipDone(Dataset):
    """Wraps a row dataset: rows already flagged done come back as `{"row": r, "skip": True}`
    without being decoded, so a resumed build only pays for what is missing. Every process sees
    the same length, so sharding stays consistent."""

    def __init__(self, inner: Dataset, done_file: Path) -> None:
        self.inner = inner
        self.done_file = done_file
        self._done: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._done is None:  # opened lazily: once per DataLoader worker
            self._done = load_array(self.done_file, mmap_mode="r")
        row = int(self.inner.rows[index])
        if self._done[row]:
            return {"row": row, "skip": True}
        return self.inner[index]


def collate_pending(items: list[dict[str, Any]], tokenize: TextTokenizer) -> dict[str, Any]:
    """Stack the rows still to do (in the loader's workers): `row` `(B,)` int64, a host array
    (not moved to the device, so never waited for), plus `image` `(B, 3, S, S)` or
    `text_inputs`, the texts tokenised by `tokenize` (the text encoder's `text_tokenizer`); a
    batch whose rows are all done already is just an empty `row`."""
    todo = [i for i in items if not i.get("skip")]
    batch: dict[str, Any] = {"row": np.array([i["row"] for i in todo], dtype=np.int64)}
    batch["segment"] = items[0].get("segment", 0)  # one per batch (`Segments`)
    if todo and "image" in todo[0]:
        batch["image"] = torch.stack([i["image"] for i in todo])
    elif todo:
        batch["text_inputs"] = tokenize([i["text"] for i in todo])
    return batch


def global_rank() -> int:
    """This process's global rank as Lightning's launchers set it (0 outside distributed runs)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    node = int(os.environ.get("NODE_RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    return node * int(os.environ.get("LOCAL_WORLD_SIZE", 1)) + local


def wait_for(path: Path, expected: dict[str, Any], timeout: float = 3600.0) -> None:
    """Non-zero ranks wait for rank 0 to finish allocating (shared filesystem)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, CacheCorruptError):  # not there, or being replaced
            if path.is_file() and read_json(path) == expected:
                return
        time.sleep(0.5)
    raise TimeoutError(f"rank {global_rank()}: gave up waiting for {path}")


def shapes_of(image_encoder: FrozenImageEncoder, text_encoder: FrozenTextEncoder) -> Shapes:
    """Per-row shapes, from one encoded dummy pair (cheap, and exact for any encoder)."""
    tokens_i, _, emb_i = image_encoder(dummy_image(image_encoder))
    tokens_t, _, emb_t = text_encoder([""])
    return Shapes(
        layers=tokens_i.shape[0],
        image_tokens=tokens_i.shape[2],
        image_width=tokens_i.shape[3],
        image_embed=emb_i.shape[1],
        text_tokens=tokens_t.shape[2],
        text_width=tokens_t.shape[3],
        text_embed=emb_t.shape[1],
    )


def dummy_image(image_encoder: FrozenImageEncoder) -> torch.Tensor:
    size = image_encoder.image_size
    device = image_encoder.mean.device
    return torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)


def is_complete(folder: Path, build: dict[str, Any]) -> bool:
    """Whether `folder` holds the complete split of `build` (by its manifest; a damaged manifest
    raises `CacheCorruptError`)."""
    manifest = folder / "manifest.json"
    return manifest.is_file() and read_json(manifest, dict) == {**build, "complete": True}


def claim(
    folder: Path,
    build: dict[str, Any],
    overwrite: bool,
    verify: bool = False,
    image_stats: np.ndarray | None = None,
) -> bool:
    """Whether `folder` still needs building for `build`; refuses to replace another config's
    cache (complete or not), a damaged one, or one whose dataset files changed since (its
    `content_sha256` differs; `image_stats` of the files now count the changed ones), unless
    `overwrite`. A complete one is opened (the cheap checks), or with `verify` checked row by
    row."""
    manifest, started = folder / "manifest.json", folder / "build.json"
    try:
        if is_complete(folder, build):
            verify_split(folder) if verify else SplitCacheReader(folder)
            return False
        if manifest.is_file():
            saved = read_json(manifest, dict)
        elif not started.is_file():
            return True  # nothing there
        elif read_json(started, dict) == build:
            SplitCacheWriter(folder).open().arrays.clear()  # its files still open: resume it
            return True
        else:
            saved = read_json(started, dict)
    except CacheCorruptError:
        if not overwrite:
            raise
        saved = None
    if saved is not None and not overwrite:

        def without(config: dict[str, Any], *names: str) -> dict[str, Any]:
            return {k: v for k, v in config.items() if k not in names}

        # a config difference first: a changed dataset matters only for the same config
        field = (
            first_difference(
                without(saved, "complete", CONTENT_FIELD), without(build, CONTENT_FIELD)
            )
            or first_difference(without(saved, "complete"), build)
            or first_difference(saved, {**build, "complete": True})
            or "?"
        )
        if field == CONTENT_FIELD and saved.get(CONTENT_FIELD) is None:
            raise CacheStaleError(
                f"{folder} holds a feature cache without {CONTENT_FIELD} (built by an older "
                "rlrt, which did not record the dataset files' sizes and modification times); "
                "pass --overwrite to rebuild it"
            )
        if field == CONTENT_FIELD:
            stats = np.empty((0, 2), np.int64) if image_stats is None else image_stats
            changed = None if image_stats is None else changed_image_files(folder, stats)
            raise CacheStaleError(stale_message(folder, changed, len(stats)))
        if field == "dtype":
            raise CacheMismatchError(
                f"{folder} holds a feature cache of another config (dtype differs: stored as "
                f"{saved.get('dtype')}, this run asks for --storage_dtype {build.get('dtype')}); "
                "pass the same --storage_dtype to use or resume it, --overwrite to replace it, "
                "or choose another folder"
            )
        raise CacheMismatchError(
            f"{folder} holds a feature cache of another config ({field} differs); "
            "pass --overwrite to replace it, or choose another folder"
        )
    (folder / "manifest.json").unlink(missing_ok=True)  # first: never a manifest over a partial
    for path in folder.iterdir():
        path.unlink()
    return True


def build_dummy(folder: Path, image_encoder, text_encoder, shapes: Shapes, build: dict) -> None:
    """One row each: the dummy image (all ones after normalisation) and the empty text."""
    SplitCacheWriter.create(
        folder,
        build=build,
        ids=["<dummy>"],
        sample_image_row=np.zeros(1),
        num_images=1,
        shapes=shapes,
    )
    writer = SplitCacheWriter(folder).open()
    image = dummy_image(image_encoder)
    tokens, _, embedding = image_encoder(
        image, torch.zeros(1, dtype=torch.bool, device=image.device)
    )
    writer.write_images(np.zeros(1, dtype=np.int64), tokens.half(), embedding.half())
    tokens, mask, embedding = text_encoder([""])
    writer.write_texts(np.zeros(1, dtype=np.int64), tokens.half(), mask, embedding.half())
    writer.finalize({**build, "complete": True})


@contextlib.contextmanager
def progress_named(trainer: Trainer, description: str) -> Iterator[None]:
    """Name the progress bar of the `trainer.predict` within (Lightning's bars call every
    prediction "Predicting"; here it is the cache being built, one pass per kind of input)."""
    bar = trainer.progress_bar_callback
    if bar is None:
        yield
        return
    original = type(bar)
    named = property(lambda _: description)
    bar.__class__ = type(original.__name__, (original,), {"predict_description": named})
    try:
        yield
    finally:
        bar.__class__ = original


@dataclass(frozen=True)
class SplitJob:
    """A split to encode: its folder, its sources (`rlrt.cache.sources`) and its build record."""

    folder: Path
    sources: Any
    build: dict[str, Any]


def prepare_split(job: SplitJob, shapes: Shapes) -> None:
    """Allocate the split's arrays (global rank 0; a resumed build keeps its rows) or wait for
    them (the other ranks)."""
    sources = job.sources
    if global_rank() != 0:
        wait_for(job.folder / "build.json", job.build)
        return
    SplitCacheWriter.create(
        job.folder,
        build=job.build,
        ids=sources.ids,
        sample_image_row=sources.sample_image_row,
        num_images=max(len(sources.image_paths), 1),  # keep arrays non-empty; row 0 unused then
        shapes=shapes,
        image_stats=sources.image_stats,
    )
    if not sources.image_paths:
        marker = np.load(job.folder / "image_done.npy", mmap_mode="r+")
        marker[:] = True
        marker.flush()


def build_splits(
    trainer: Trainer,
    extractor: FeatureExtractor,
    writer: RowWriter,
    jobs: list[SplitJob],
    *,
    shapes: Shapes,
    batch_size: int,
    num_workers: int,
) -> None:
    """Encode the distinct images and the texts of every split of `jobs` in one
    `trainer.predict` (resuming where a killed build stopped): the encoders go to the device
    once, the loader's workers decode images and tokenise texts and `writer`'s thread writes
    rows while the device encodes; every write is done before the manifests are written."""
    for job in jobs:
        prepare_split(job, shapes)
    segments = [
        Segment(job.folder, kind, SkipDone(dataset, job.folder / f"{kind}_done.npy"))
        for job in jobs
        for kind, dataset in (
            ("image", job.sources.image_dataset(np.arange(len(job.sources.image_paths)))),
            ("text", job.sources.text_dataset(np.arange(len(job.sources.ids)))),
        )
        if len(dataset) > 0
    ]
    if segments:
        writer.start(segments)
        loader = DataLoader(
            Segments(segments, batch_size, trainer.world_size),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=functools.partial(
                collate_pending, tokenize=extractor.text_encoder.text_tokenizer
            ),
            # page-locked batches: their copy to the GPU does not hold up the host
            pin_memory=trainer.strategy.root_device.type == "cuda",
        )
        names = ", ".join(dict.fromkeys(job.folder.name for job in jobs))
        with progress_named(trainer, f"encoding {names}"):
            trainer.predict(extractor, dataloaders=loader, return_predictions=False)
        writer.drain()  # done by `on_predict_end` already; cheap, and sure before the manifests
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        for job in jobs:
            SplitCacheWriter(job.folder).open().finalize({**job.build, "complete": True})
