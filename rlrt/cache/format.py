"""The frozen-feature cache: pooled `Features` stored once, read by every later epoch.

Layout of a cache folder (plain `.npy` arrays and JSON; nothing is pickled):

    <cache>/dummy/            the dummy inputs' features (all-ones image, empty text), one row each
    <cache>/<split>/
        manifest.json         written last: its presence marks the split complete
        build.json            what is being built (checked before a killed build is resumed)
        ids.json              sample ids, in row order
        sample_image_row.npy  (N,) int64: each sample's row in the image arrays (-1: no image)
        image_stats.npy       (M, 2) int64: each image file's size and mtime (ns) when built
        image_tokens.npy      (M, L_s, N_i, D_i) float16, one row per distinct image
        image_embedding.npy   (M, E_i) float16
        image_done.npy        (M,) bool: rows written and flushed
        text_tokens.npy       (N, L_s, N_t, D_t) float16, one row per sample
        text_mask.npy         (N, N_t) bool
        text_embedding.npy    (N, E_t) float16
        text_done.npy         (N,) bool

Arrays are memory-mapped for reading. Images are stored once per distinct image file (SNLI-VE
serves ~18 hypotheses per image). The image mask is all True by construction and not stored.

Storage dtype (the manifest's `dtype`, chosen by `rlrt cache --storage_dtype`): `float16` as
above, or `int8`, about half the bytes: each of the four feature arrays is stored as int8 values
`round(x / s)` with one float32 scale `s = max|x| / 127` per feature vector (the last axis) in
`<name>_scale.npy`, shaped like the array without its last axis (e.g. `image_tokens_scale.npy`
`(M, L_s, N_i)`); a zero vector has `s = 0` and reads back as zeros. A value is off by at most
`s / 2`. Readers dequantize when they gather rows: they see float16 either way.

`<cache>/.rlrt-cache.lock` is held (`flock`, exclusive) by the `rlrt cache` writing the folder;
it holds `{"pid": N}` of that process while held, `{}` after. A reader refuses an incomplete
split while it is held.

Opening a split checks what is cheap: the manifest's fields, that every array file opens with the
shape and dtype the others imply, that `sample_image_row` is in range, and that a few sampled rows
are finite. `verify_split` (`rlrt cache --verify`) checks every row.

The manifest's `content_sha256` (`rlrt.cache.content.content_fingerprint`) hashes what the
features depend on: every sample's text and the size and modification time of its image file.
Training from the cache recomputes it (one `stat` per image file, no decoding) and refuses a cache
whose dataset files changed since it was built (`check_content`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlrt.engine.files import atomic_write_json
from rlrt.features import Features

# int8 caches keep version 1: an rlrt that predates them refuses their manifest's dtype
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float16": np.dtype(np.float16), "int8": np.dtype(np.int8)}
SCALE_DTYPE = np.dtype(np.float32)


LOCK_NAME = ".rlrt-cache.lock"
REBUILD = "rebuild it with `rlrt cache` (same config) and --overwrite"
FEATURE_ARRAYS = ("image_tokens", "image_embedding", "text_tokens", "text_embedding")
_OPEN_SAMPLE_ROWS = 8  # rows per float array checked for finite values when a split is opened
_VERIFY_CHUNK_BYTES = 64 * 2**20


class CacheMismatchError(ValueError):
    """A cache built for another configuration than the run's."""


class CacheStaleError(CacheMismatchError):
    """A cache built from dataset files that changed since (same ids, other contents)."""


CONTENT_FIELD = "content_sha256"


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


class CacheCorruptError(ValueError):
    """A cache file that is damaged: unreadable, of the wrong shape or type, or non-finite."""


class CacheBusyError(ValueError):
    """The cache folder is being written by another `rlrt cache`."""


class CacheSpaceError(ValueError):
    """The cache would not fit in the free space of its disk (found before any work)."""


class CacheMemoryError(ValueError):
    """A cached split asked to stay in a device's memory (`cache_in_device_memory: always`) does
    not fit there."""


def damaged(path: Path, what: str) -> CacheCorruptError:
    return CacheCorruptError(f"feature cache file {path} is damaged ({what}); {REBUILD}")


def read_json(path: Path, kind: type | None = None) -> Any:
    """The JSON in `path` (of type `kind` if given); a damaged file raises `CacheCorruptError`."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise damaged(Path(path), "missing") from None
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise damaged(Path(path), f"not valid JSON: {' '.join(str(err).split())}") from None
    if kind is not None and not isinstance(value, kind):
        raise damaged(Path(path), f"a JSON {type(value).__name__}, not a JSON {kind.__name__}")
    return value


def load_array(path: Path, mmap_mode: str | None = "r") -> np.ndarray:
    """`np.load` of a cache array; a missing or unreadable file raises `CacheCorruptError`."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (OSError, ValueError, EOFError) as err:
        what = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, EOFError) or (path.is_file() and path.stat().st_size == 0):
            what = "empty or truncated file"
        raise damaged(path, f"not a readable .npy array: {what}") from None


def lock_holder(cache_dir: Path) -> str | None:
    """`pid N` (or `unknown pid`) of the `rlrt cache` writing `cache_dir`, or None if none is."""
    lock = Path(cache_dir) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_pid(fd) or "unknown pid"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_pid(fd: int) -> str | None:
    """`pid N` as the lock file's holder wrote it, or None."""
    found = re.search(rb"\d+", os.pread(fd, 256, 0))
    return f"pid {int(found.group())}" if found else None


def _rewrite(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


@contextlib.contextmanager
def cache_write_lock(cache_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of `cache_dir` (created if needed) while the block runs; another
    holder makes this raise `CacheBusyError` at once."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = cache_dir / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder_pid(fd) or "another process"
            raise CacheBusyError(
                f"feature cache folder {cache_dir} is being written by another `rlrt cache` "
                f"({who}); wait for it to finish or use another folder"
            ) from None
        _rewrite(fd, json.dumps({"pid": os.getpid()}))
        try:
            yield
        finally:
            _rewrite(fd, "{}")  # JSON like the rest of the folder, and no stale pid
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def ids_digest(ids: list[str]) -> str:
    """A short hash of the sample ids in order (detects a different or partial dataset)."""
    digest = hashlib.sha256()
    for sample_id in ids:
        digest.update(sample_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def first_difference(saved: Any, expected: Any, prefix: str = "") -> str | None:
    """The dotted path of the first field where two JSON-like values differ, or None."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        for key in sorted(set(saved) | set(expected)):
            found = first_difference(saved.get(key), expected.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if saved == expected else prefix.rstrip(".")


def _lookup(value: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def check_fields(manifest: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    """Raise `CacheMismatchError` naming the first field of `expected` where `manifest` differs."""
    subset = {key: manifest.get(key) for key in expected}
    field = first_difference(subset, expected)
    if field is not None:
        raise CacheMismatchError(
            f"feature cache {where} was built with {field}={_lookup(subset, field)!r} but this run "
            f"has {_lookup(expected, field)!r}; rebuild it with `rlrt cache` for this config or "
            "point data.feature_cache elsewhere"
        )


def _allocate(path: Path, shape: tuple[int, ...], dtype: Any) -> np.memmap:
    """Create a `.npy` file of `shape` and reserve its disk blocks now.

    A sparse file would only fail when a page is first written (SIGBUS, mid-build); reserving up
    front turns a full disk into one clear error before any work is done.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = path.stat().st_size
    try:
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as err:
        del array
        path.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"not enough disk space for the feature cache: {path.name} needs "
                f"{size / 2**20:.1f} MiB in {path.parent}; free space or choose another folder",
            ) from err
        raise
    return array


@dataclass(frozen=True)
class Shapes:
    """Per-row shapes of the stored features."""

    layers: int
    image_tokens: int
    image_width: int
    image_embed: int
    text_tokens: int
    text_width: int
    text_embed: int


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors `(..., D)` (any float dtype) -> int8 values `(..., D)` and float32 scales
    `(...)`: `s = max|x| / 127` per vector, values `round(x / s)`. A zero vector gets `s = 0` and
    values 0; a vector holding NaN or inf gets a non-finite `s` (found by the reader's checks)."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.abs(x).max(axis=-1) / np.float32(127)
    usable = (np.isfinite(scale) & (scale > 0))[..., None]
    ratio = np.divide(x, scale[..., None], out=np.zeros_like(x), where=usable)
    return np.clip(np.rint(ratio), -127, 127).astype(np.int8), scale


def dequantize(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 values `(..., D)` and scales `(...)` -> float16 `(..., D)`."""
    return (values.astype(np.float32) * scale[..., None]).astype(np.float16)


class Dequantized:
    """An int8 feature array `(R, ..., D)` with its scales `(R, ...)`, read as float16: indexing
    the first axis (an int, slice or index array) returns the float16 rows; `np.asarray` gives
    the whole array (as `np.asarray` of a float16 memmap would)."""

    dtype = np.dtype(np.float16)

    def __init__(self, values: np.ndarray, scale: np.ndarray) -> None:
        self.values = values
        self.scale = scale

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def ndim(self) -> int:
        return self.values.ndim

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: Any) -> np.ndarray:
        return dequantize(np.asarray(self.values[index]), np.asarray(self.scale[index]))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def array_specs(
    num_samples: int, num_images: int, shapes: Shapes, dtype: str = "float16"
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`{file stem: (shape, dtype)}` of the arrays `SplitCacheWriter.create` allocates for
    `num_samples` samples and `num_images` image rows stored as `dtype` (float16 or int8)."""
    n, m, s, stored = num_samples, num_images, shapes, STORAGE_DTYPES[dtype]
    specs = {
        "image_tokens": ((m, s.layers, s.image_tokens, s.image_width), stored),
        "image_embedding": ((m, s.image_embed), stored),
        "image_done": ((m,), np.dtype(np.bool_)),
        "text_tokens": ((n, s.layers, s.text_tokens, s.text_width), stored),
        "text_mask": ((n, s.text_tokens), np.dtype(np.bool_)),
        "text_embedding": ((n, s.text_embed), stored),
        "text_done": ((n,), np.dtype(np.bool_)),
    }
    if dtype == "int8":
        for name in FEATURE_ARRAYS:
            specs[f"{name}_scale"] = (specs[name][0][:-1], SCALE_DTYPE)
    return specs


_BLOCK = 4096
_SMALL_FILES = 16 * 2**10  # build.json and manifest.json: a few KiB each


def estimated_split_bytes(
    num_samples: int, num_images: int, shapes: Shapes, dtype: str, ids_bytes: int = 0
) -> int:
    """Disk bytes of one split folder as `SplitCacheWriter.create` lays it out: every array
    (rows x per-row bytes, a 128-byte `.npy` header, rounded up to whole 4 KiB blocks), the
    sample-row and image-stats arrays, `ids_bytes` of `ids.json` and the small JSON files."""

    def on_disk(nbytes: int) -> int:
        return -(-(nbytes + 128) // _BLOCK) * _BLOCK

    arrays = array_specs(num_samples, num_images, shapes, dtype).values()
    total = sum(on_disk(int(np.prod(shape)) * kind.itemsize) for shape, kind in arrays)
    total += on_disk(8 * num_samples) + on_disk(16 * num_images)  # sample_image_row, image_stats
    return total + on_disk(ids_bytes) + _SMALL_FILES


class SplitCacheWriter:
    """Creates (or reopens, to resume) one split's arrays and writes rows by index.

    Several processes may write disjoint (or identical) rows of the same files; `create` runs on
    one process first, the others `open` after a barrier.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.arrays: dict[str, np.memmap] = {}

    @staticmethod
    def create(
        folder: Path,
        *,
        build: dict[str, Any],
        ids: list[str],
        sample_image_row: np.ndarray,
        num_images: int,
        shapes: Shapes,
        image_stats: np.ndarray | None = None,
    ) -> None:
        """Allocate every array, unless an identical build was started before (resume), stored
        as `build["dtype"]` (float16 when absent; see `array_specs`). `image_stats` (`(M, 2)`
        sizes and mtimes of the image files) is stored to count the files that changed when a
        stale cache is refused."""
        folder = Path(folder)
        build_file = folder / "build.json"
        if build_file.is_file() and _read_or_none(build_file) == build:
            return  # same build interrupted earlier: keep the rows already done
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)
        specs = array_specs(len(ids), num_images, shapes, build.get("dtype", "float16"))
        for name, (shape, dtype) in specs.items():
            array = _allocate(folder / f"{name}.npy", shape, dtype)
            array.flush()
            del array
        np.save(folder / "sample_image_row.npy", sample_image_row.astype(np.int64))
        if image_stats is not None:
            np.save(folder / "image_stats.npy", np.asarray(image_stats, dtype=np.int64))
        (folder / "ids.json").write_text(json.dumps(ids))
        atomic_write_json(build_file, build)  # last: the allocation is complete

    def open(self) -> SplitCacheWriter:
        """Open the arrays for writing; int8 feature arrays (as allocated) with their scales."""
        for name in (
            "image_tokens",
            "image_embedding",
            "image_done",
            "text_tokens",
            "text_mask",
            "text_embedding",
            "text_done",
        ):
            self.arrays[name] = load_array(self.folder / f"{name}.npy", mmap_mode="r+")
        for name in FEATURE_ARRAYS:
            if self.arrays[name].dtype == np.int8:
                scale = f"{name}_scale"
                self.arrays[scale] = load_array(self.folder / f"{scale}.npy", mmap_mode="r+")
        return self

    def _put(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Store feature `values` `(B, ..., D)` in rows `rows` of array `name`, quantized when
        the array is int8."""
        if f"{name}_scale" in self.arrays:
            values, self.arrays[f"{name}_scale"][rows] = quantize(values)
        self.arrays[name][rows] = values

    def pending(self, kind: str) -> np.ndarray:
        """Row indices of `kind` (`image` or `text`) not written yet."""
        return np.flatnonzero(~np.asarray(self.arrays[f"{kind}_done"]))

    def write_images(self, rows: np.ndarray, tokens: Tensor, embedding: Tensor) -> None:
        """rows `(B,)`, tokens `(L_s, B, N_i, D_i)`, embedding `(B, E_i)`."""
        self._put("image_tokens", rows, tokens.transpose(0, 1).cpu().numpy())
        self._put("image_embedding", rows, embedding.cpu().numpy())
        self._mark("image", rows)

    def write_texts(
        self, rows: np.ndarray, tokens: Tensor, mask: Tensor, embedding: Tensor
    ) -> None:
        """rows `(B,)`, tokens `(L_s, B, N_t, D_t)`, mask `(B, N_t)`, embedding `(B, E_t)`."""
        self._put("text_tokens", rows, tokens.transpose(0, 1).cpu().numpy())
        self.arrays["text_mask"][rows] = mask.cpu().numpy()
        self._put("text_embedding", rows, embedding.cpu().numpy())
        self._mark("text", rows)

    def _mark(self, kind: str, rows: np.ndarray) -> None:
        for name, array in self.arrays.items():
            if name.startswith(kind) and not name.endswith("done"):
                array.flush()
        self.arrays[f"{kind}_done"][rows] = True  # only after the rows are on disk
        self.arrays[f"{kind}_done"].flush()

    def finalize(self, manifest: dict[str, Any]) -> None:
        """Check every row is done, then write the manifest (the split is complete from here)."""
        for kind in ("image", "text"):
            missing = len(self.pending(kind))
            if missing:
                raise RuntimeError(
                    f"feature cache {self.folder}: {missing} {kind} rows not written"
                )
        self.arrays.clear()
        atomic_write_json(self.folder / "manifest.json", manifest)


def _read_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, CacheCorruptError):
        return None


class SplitCacheReader:
    """Read-only, memory-mapped access to one complete split (or the `dummy` folder).

    The feature attributes (`image_tokens`, `image_embedding`, `text_tokens`, `text_embedding`)
    read as float16 whatever the storage dtype: the float16 memmaps themselves, or `Dequantized`
    views of an int8 cache. `stored` holds the arrays as stored (values and `<name>_scale`).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest_file = self.folder / "manifest.json"
        if not manifest_file.is_file():
            state = "an unfinished build" if (self.folder / "build.json").is_file() else "nothing"
            writer = lock_holder(self.folder.parent)
            if writer is not None:
                raise FileNotFoundError(
                    f"feature cache {self.folder} is not complete: `rlrt cache` ({writer}) is "
                    "building it now; wait for it to finish, then rerun"
                )
            raise FileNotFoundError(
                f"feature cache {self.folder} is not complete (found {state}); "
                "run `rlrt cache` with this config to build or resume it"
            )
        self.manifest: dict[str, Any] = read_json(manifest_file, dict)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheMismatchError(
                f"feature cache {self.folder} has format version "
                f"{self.manifest.get('format_version')}, this rlrt reads {FORMAT_VERSION}; "
                "rebuild it"
            )
        _check_manifest(self.manifest, manifest_file)
        self.ids: list[str] = read_json(self.folder / "ids.json", list)
        self.dtype: str = self.manifest["dtype"]
        names = [*FEATURE_ARRAYS, "text_mask"]
        if self.dtype == "int8":
            names += [f"{name}_scale" for name in FEATURE_ARRAYS]
        self.stored = {name: load_array(self.path(name)) for name in names}
        self.text_mask = self.stored["text_mask"]
        self.sample_image_row = load_array(self.folder / "sample_image_row.npy", mmap_mode=None)
        self._check_shapes()
        for name in FEATURE_ARRAYS:
            array = self.stored[name]
            if self.dtype == "int8":
                array = Dequantized(array, self.stored[f"{name}_scale"])
            setattr(self, name, array)
        self.check_rows(_sample_rows)

    def path(self, name: str) -> Path:
        return self.folder / (f"{name}.npy" if name != "ids" else "ids.json")

    def _check_shapes(self) -> None:
        """Every array has the shape and dtype the manifest and the other arrays imply (an int8
        cache's scales: the shape of their array without its last axis, float32)."""
        stored = self.stored
        n, m = len(self.ids), stored["image_tokens"].shape[0] if stored["image_tokens"].ndim else 0
        if not all(isinstance(i, str) for i in self.ids):
            raise damaged(self.path("ids"), "not a list of strings")
        if "num_samples" in self.manifest and self.manifest["num_samples"] != n:
            said = self.manifest["num_samples"]
            raise damaged(self.path("ids"), f"{n} ids, the manifest says {said}")
        tokens = stored["text_tokens"]
        layers = tokens.shape[1] if tokens.ndim == 4 else None
        pooling = self.manifest.get("token_pooling", {})
        kind = STORAGE_DTYPES[self.dtype]
        expected = {  # name: (shape with None where any size goes, dtype)
            "text_tokens": ((n, None, pooling.get("text_tokens"), None), kind),
            "text_mask": ((n, tokens.shape[2] if tokens.ndim == 4 else None), np.bool_),
            "text_embedding": ((n, None), kind),
            "image_tokens": ((None, layers, pooling.get("image_tokens"), None), kind),
            "image_embedding": ((m, None), kind),
        }
        if self.dtype == "int8":
            for name in FEATURE_ARRAYS:
                values = stored[name].shape if stored[name].ndim else (None,)
                expected[f"{name}_scale"] = (values[:-1], SCALE_DTYPE)
        expected["sample_image_row"] = ((n,), np.int64)
        for name, (shape, dtype) in expected.items():
            array = self.sample_image_row if name == "sample_image_row" else stored[name]
            fits = array.ndim == len(shape) and all(
                want is None or have == want for have, want in zip(array.shape, shape)
            )
            if not fits or array.dtype != dtype:
                want = "(" + ", ".join("*" if d is None else str(d) for d in shape) + ")"
                raise damaged(
                    self.path(name),
                    f"{array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{want}",
                )
        if m < 1:
            raise damaged(self.path("image_tokens"), "no image rows")
        rows = self.sample_image_row
        bad = np.flatnonzero((rows < -1) | (rows >= m))
        if len(bad):
            raise damaged(
                self.path("sample_image_row"),
                f"row {bad[0]} is {rows[bad[0]]}, outside -1..{m - 1}",
            )

    def check_rows(self, which) -> int:
        """Check the float arrays' rows `which(num_rows)` (an iterable of index arrays) are
        finite as read (dequantized), and an int8 cache's scales not negative; raise
        `CacheCorruptError` naming the first bad file and row (the scale file of an int8
        cache: its values cannot be non-finite). Returns the number of rows checked."""
        checked = 0
        for name in FEATURE_ARRAYS:
            array = getattr(self, name)
            scaled = isinstance(array, Dequantized)
            path = self.path(f"{name}_scale" if scaled else name)
            for index in which(array):
                block = np.asarray(array[index])
                finite = np.isfinite(block).reshape(len(index), -1).all(axis=1)
                if not finite.all():
                    row = int(index[int(np.argmin(finite))])
                    raise damaged(path, f"row {row} holds NaN or infinite values")
                if scaled:
                    signs = (np.asarray(array.scale[index]) >= 0).reshape(len(index), -1)
                    if not signs.all():
                        row = int(index[int(np.argmin(signs.all(axis=1)))])
                        raise damaged(path, f"row {row} holds a negative scale")
                checked += len(index)
        return checked

    def __len__(self) -> int:
        return len(self.ids)

    def gather(self, rows: np.ndarray) -> tuple[Features, Tensor]:
        """Features of the samples `rows` `(B,)` in float16 as stored, and `has_image` bool `(B,)`.

        Kept float16: the model casts to its own dtype on its own device (half the bytes to move
        to a GPU, and no float32 copy made here). A sample without an image file gets image row
        0's values; the caller marks it absent.
        """
        image_rows = self.sample_image_row[rows]
        has_image = image_rows >= 0
        image_rows = np.where(has_image, image_rows, 0)

        def tensor(array: np.ndarray, index: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(array[index]))

        def layers_first(array: np.ndarray, index: np.ndarray) -> Tensor:
            """Stored rows `(B, L_s, N, D)` -> `(L_s, B, N, D)`, a transposed view: no second
            copy here (the model's dtype cast makes the one it needs, per layer slices work on
            strides)."""
            return torch.from_numpy(array[index]).transpose(0, 1)

        image_tokens = layers_first(self.image_tokens, image_rows)  # (L_s, B, N_i, D_i)
        features = Features(
            image_tokens=image_tokens,
            image_mask=torch.ones(image_tokens.shape[1:3], dtype=torch.bool),
            image_embedding=tensor(self.image_embedding, image_rows),
            text_tokens=layers_first(self.text_tokens, rows),
            text_mask=torch.from_numpy(np.ascontiguousarray(self.text_mask[rows])),
            text_embedding=tensor(self.text_embedding, rows),
        )
        return features, torch.from_numpy(has_image)


def _check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """The fields every manifest has, and the optional ones, of the right types."""
    required = {"format_version": int, "dtype": str, "encoders": dict, "complete": bool}
    optional = {
        "num_samples": int,
        "token_pooling": dict,
        "ids_sha256": str,
        "split": str,
        CONTENT_FIELD: str,
    }
    for key, kind in {**required, **optional}.items():
        if key not in manifest:
            if key in required:
                raise damaged(where, f"no {key!r} field")
            continue
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool) != (kind is bool):
            raise damaged(where, f"{key!r} is {manifest[key]!r}, not a {kind.__name__}")
    if manifest["complete"] is not True:
        raise damaged(where, f"complete={manifest['complete']!r}")
    if manifest["dtype"] not in STORAGE_DTYPES:
        known = " or ".join(STORAGE_DTYPES)
        raise damaged(where, f"dtype={manifest['dtype']!r}, this rlrt stores {known}")
    for key, value in manifest.get("token_pooling", {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise damaged(where, f"token_pooling.{key} is {value!r}, not an int")


def _sample_rows(array: np.ndarray) -> Iterator[np.ndarray]:
    """A few rows, cheap for any size: the first, the last and some evenly spaced between."""
    n = len(array)
    if n:
        yield np.unique(np.linspace(0, n - 1, num=min(n, _OPEN_SAMPLE_ROWS)).round().astype(int))


def _all_rows(array: np.ndarray) -> Iterator[np.ndarray]:
    """Every row, in chunks of about `_VERIFY_CHUNK_BYTES`."""
    n = len(array)
    row_bytes = max(array[0].nbytes if n else 1, 1)
    step = max(1, _VERIFY_CHUNK_BYTES // row_bytes)
    for start in range(0, n, step):
        yield np.arange(start, min(start + step, n))


def verify_split(folder: Path) -> SplitCacheReader:
    """Open `folder` (the cheap checks) then check every row: finite values, rows flagged done,
    ids as the manifest's digest. Raises `CacheCorruptError` naming the first bad file/row."""
    reader = SplitCacheReader(folder)
    reader.check_rows(_all_rows)
    for kind in ("image", "text"):
        path = reader.folder / f"{kind}_done.npy"
        done = load_array(path)
        expected = len(reader.image_tokens if kind == "image" else reader.ids)
        if done.shape != (expected,) or done.dtype != np.bool_:
            raise damaged(path, f"{done.dtype}{list(done.shape)}, expected bool({expected},)")
        missing = np.flatnonzero(~np.asarray(done))
        if len(missing):
            raise damaged(path, f"{kind} row {missing[0]} was never written")
    digest = reader.manifest.get("ids_sha256")
    if digest is not None and ids_digest(reader.ids) != digest:
        raise damaged(reader.path("ids"), "the ids differ from the manifest's ids_sha256")
    return reader
